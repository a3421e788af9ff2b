//! Categories, colors and crops as a user of `tagfleet run` asks for them: the real
//! binary, the real model, the sample photos; then `tagfleet join` on what was stored.

use std::path::Path;

use crate::common::*;

const EVERY: [&str; 2] = ["--analyses", "tags,categories,colors,crops"];

fn photos(dir: &Path) -> std::path::PathBuf {
    let photos = dir.join("photos");
    copy_photos(
        &photos,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("motorcycle_left.png", "motorcycle.png"),
        ],
    );
    photos
}

fn run_json(photos: &Path, dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let run = run_on(photos, &dir.join("out"), &dir.join("key"), &args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    json_lines(&run)
}

/// The first category of a line and its confidence.
fn top_category(line: &serde_json::Value) -> (String, f64) {
    let first = &line["categories"][0];
    (
        first["name"].as_str().unwrap_or("none").to_owned(),
        first["confidence"].as_f64().unwrap_or(0.0),
    )
}

#[test]
fn photos_are_sorted_into_the_categories_a_library_browses_by() {
    let dir = tempfile::tempdir().unwrap();
    let lines = run_json(&photos(dir.path()), dir.path(), &EVERY);
    for (file, category) in [
        ("coffee.png", "food and drink"),
        ("chelsea.png", "animals"),
        ("motorcycle.png", "vehicles"),
    ] {
        let line = line_for(&lines, file);
        let (name, confidence) = top_category(line);
        assert_eq!(name, category, "{file}: {}", line["categories"]);
        assert!((0.3..=1.0).contains(&confidence), "{file}: {confidence}");
        // Tags name their WordNet synset.
        let synset = line["tags"][0]["synset"].as_str().unwrap();
        assert!(synset.contains(".n."), "{file}: {synset}");
    }

    // A blank frame is in no category: the model's spread over 398 animal classes is not
    // evidence of an animal.
    let blank = dir.path().join("blank");
    std::fs::create_dir_all(&blank).unwrap();
    image::RgbImage::from_pixel(500, 300, image::Rgb([128, 128, 128]))
        .save(blank.join("grey.png"))
        .unwrap();
    let lines = run_json(
        &blank,
        dir.path(),
        &["--analyses", "categories", "--parents"],
    );
    let grey = &line_for(&lines, "grey.png")["categories"];
    assert_eq!(grey.as_array().map(Vec::len), Some(0), "{grey}");

    // The retail categorizer sorts the espresso among groceries, not animals or vehicles.
    let retail = run_json(
        &photos(dir.path()),
        dir.path(),
        &["--analyses", "categories", "--categorizer", "retail"],
    );
    let coffee = line_for(&retail, "coffee.png");
    assert_eq!(
        top_category(coffee).0,
        "groceries",
        "{}",
        coffee["categories"]
    );
    assert!(
        coffee.get("tags").is_none(),
        "only what was asked: {coffee}"
    );
}

#[test]
fn parent_tags_follow_the_wordnet_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let lines = run_json(
        &photos(dir.path()),
        dir.path(),
        &["--parents", "--top-k", "3"],
    );
    let chelsea = &line_for(&lines, "chelsea.png")["tags"];
    let parents: Vec<&str> = chelsea
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["parent"] == true)
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    for wanted in ["cat", "feline", "animal"] {
        assert!(parents.contains(&wanted), "{wanted} in {parents:?}");
    }
    let model_tags = chelsea
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t.get("parent").is_none());
    assert!(model_tags.count() <= 3, "{chelsea}");
}

#[test]
fn colors_and_crops_are_reported_in_the_original_image() {
    let dir = tempfile::tempdir().unwrap();
    let lines = run_json(
        &photos(dir.path()),
        dir.path(),
        &[
            "--analyses",
            "colors,crops",
            "--colors",
            "3",
            "--crops",
            "1:1,16:9,300x200,4000x3000",
        ],
    );
    for line in &lines {
        let (width, height) = (
            line["width"].as_u64().unwrap(),
            line["height"].as_u64().unwrap(),
        );
        let colors = &line["colors"];
        for list in ["image", "background", "foreground"] {
            let list = colors[list].as_array().unwrap();
            assert!(list.len() <= 3, "{colors}");
            for color in list {
                let hex = color["hex"].as_str().unwrap();
                assert!(hex.starts_with('#') && hex.len() == 7, "{color}");
                assert!(!color["name"].as_str().unwrap().is_empty(), "{color}");
                assert!(!color["parent"].as_str().unwrap().is_empty(), "{color}");
            }
        }
        // Shares are of all the pixels, most dominant first; three need not add up to 100.
        let shares: Vec<f64> = colors["image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["share"].as_f64().unwrap())
            .collect();
        assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{colors}");
        assert!(
            shares[0] > 10.0 && shares.iter().sum::<f64>() <= 100.05,
            "{colors}"
        );

        let crops = line["crops"].as_array().unwrap();
        let requests: Vec<&str> = crops
            .iter()
            .map(|c| c["request"].as_str().unwrap())
            .collect();
        assert_eq!(requests, ["1:1", "16:9", "300x200", "4000x3000"]);
        for (crop, (w, h)) in crops[..3].iter().zip([(1, 1), (16, 9), (3, 2)]) {
            let b = &crop["box"];
            let (x, y, bw, bh) = (
                b["x"].as_u64().unwrap(),
                b["y"].as_u64().unwrap(),
                b["width"].as_u64().unwrap(),
                b["height"].as_u64().unwrap(),
            );
            assert!(
                x + bw <= width && y + bh <= height,
                "{crop} in {width}x{height}"
            );
            // The ratio holds to a pixel.
            assert!((bw * h).abs_diff(bh * w) <= w.max(h), "{crop}");
        }
        // The sample photos are smaller than 4000x3000: that crop says why there is none.
        let too_big = &crops[3];
        assert!(too_big.get("box").is_none(), "{too_big}");
        let why = too_big["error"].as_str().unwrap();
        assert!(
            why.contains("4000x3000") && why.contains(&format!("{width}x{height}")),
            "{why}"
        );
    }
}

#[test]
fn the_table_and_join_show_every_analysis() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let table = run_on(
        &photos,
        &dir.path().join("out"),
        &dir.path().join("key"),
        &EVERY,
    );
    let text = String::from_utf8_lossy(&table.stdout);
    let coffee = text.lines().find(|l| l.starts_with("coffee.png")).unwrap();
    assert!(
        coffee.contains("[food and drink") && coffee.contains("colors ") && coffee.contains("1:1 "),
        "{text}"
    );

    let joined = std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(["join", "--source", photos.to_str().unwrap(), "--results"])
        .arg(dir.path().join("out"))
        .arg("--key-file")
        .arg(dir.path().join("key"))
        .output()
        .unwrap();
    let lines = json_lines(&joined);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(
            line["ref"].as_str().unwrap().starts_with("file://"),
            "{line}"
        );
        for field in ["tags", "categories", "colors", "crops"] {
            assert!(line.get(field).is_some(), "{field} in {line}");
        }
    }
}

#[test]
fn categorizers_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let run = |extra: &[&str]| {
        let mut args = vec!["--analyses", "categories"];
        args.extend_from_slice(extra);
        run_on(
            &photos,
            &dir.path().join("out"),
            &dir.path().join("key"),
            &args,
        )
    };

    let unknown = run(&["--categorizer", "pets"]);
    assert_eq!(unknown.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("\"pets\"") && err.contains("general, retail"),
        "{err}"
    );

    // An operator's file naming a synset WordNet's nouns above the model lack.
    let extra = dir.path().join("categorizers");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("pets.toml"),
        "[categories]\n\"cats\" = [\"cat.n.01\"]\n\"dragons\" = [\"dragon.n.99\"]\n",
    )
    .unwrap();
    let dir_arg = extra.to_str().unwrap();
    let broken = run(&["--categorizers-dir", dir_arg, "--categorizer", "pets"]);
    assert_eq!(broken.status.code(), Some(1));
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(
        err.contains("pets.toml") && err.contains("\"dragons\"") && err.contains("dragon.n.99"),
        "{err}"
    );

    // Fixed, the operator's categorizer is one a job can choose.
    std::fs::write(
        extra.join("pets.toml"),
        "[categories]\n\"cats\" = [\"cat.n.01\"]\n",
    )
    .unwrap();
    let fixed = run(&[
        "--categorizers-dir",
        dir_arg,
        "--categorizer",
        "pets",
        "--format",
        "json",
    ]);
    assert!(
        fixed.status.success(),
        "{}",
        String::from_utf8_lossy(&fixed.stderr)
    );
    let lines = json_lines(&fixed);
    assert_eq!(top_category(line_for(&lines, "chelsea.png")).0, "cats");
    let coffee = &line_for(&lines, "coffee.png")["categories"];
    assert_eq!(coffee.as_array().map(Vec::len), Some(0), "{coffee}");
}

#[test]
fn bad_options_stop_the_run_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    for (flag, value, says) in [
        ("--crops", "16:0", "16:0"),
        ("--colors", "0", "colors"),
        ("--categorizer", "../x", "categorizer"),
    ] {
        let run = run_on(
            &photos,
            &dir.path().join("out"),
            &dir.path().join("key"),
            &[flag, value],
        );
        assert_ne!(run.status.code(), Some(0), "{flag} {value}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
