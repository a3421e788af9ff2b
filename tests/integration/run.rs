//! `tagfleet run`, the embedded mode, as a user runs it: the real binary, the real model,
//! real photos.

use crate::common::*;

const CATS: [&str; 3] = ["tiger cat", "Egyptian cat", "tabby"];

#[test]
fn tags_real_photos() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[("chelsea.png", "chelsea.png"), ("coffee.png", "coffee.png")],
    );
    let out = dir.path().join("out");
    let run = run_on(
        &photos,
        &out,
        &dir.path().join("key"),
        &["--format", "json", "--top-k", "3"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = json_lines(&run);

    let chelsea = labels(line_for(&lines, "chelsea.png"));
    assert!(
        chelsea.iter().any(|l| CATS.contains(&l.as_str())),
        "chelsea top 3: {chelsea:?}"
    );
    let coffee = labels(line_for(&lines, "coffee.png"));
    assert_eq!(coffee[0], "espresso", "coffee: {coffee:?}");

    // The same lines are in the result object, without the file names.
    let objects = files_under(&out);
    assert_eq!(
        objects.len(),
        1,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert!(objects[0].0.starts_with("results/local/") && objects[0].0.ends_with("/t000001.jsonl"));
    let stored: Vec<serde_json::Value> = String::from_utf8_lossy(&objects[0].1)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored.len(), 2);
    for line in &lines {
        let twin = stored
            .iter()
            .find(|s| s["image"] == line["image"])
            .expect("printed line is stored");
        assert_eq!(labels(twin), labels(line));
        assert!(
            twin.get("file").is_none(),
            "stored lines carry no file name"
        );
    }
}

#[test]
fn bad_inputs_become_error_records_and_good_images_are_still_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[("coffee.png", "coffee.png"), ("chelsea.png", "chelsea.png")],
    );
    let rocket = std::fs::read(photo("rocket.jpg")).unwrap();
    std::fs::write(photos.join("truncated.jpg"), &rocket[..rocket.len() / 2]).unwrap();
    std::fs::write(photos.join("empty.jpg"), b"").unwrap();
    std::fs::write(photos.join("notes.jpg"), b"shopping list: milk, eggs\n").unwrap();
    std::fs::write(
        photos.join("huge.png"),
        png_claiming_size("chelsea.png", 20_000, 20_000),
    )
    .unwrap();

    let run = run_on(
        &photos,
        &dir.path().join("out"),
        &dir.path().join("key"),
        &["--format", "json"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "some images failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("6 images") && stderr.contains("4 failed"),
        "{stderr}"
    );

    let lines = json_lines(&run);
    let kind = |file: &str| {
        line_for(&lines, file)["error"]["kind"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(kind("truncated.jpg").as_deref(), Some("decode"));
    assert_eq!(kind("empty.jpg").as_deref(), Some("decode"));
    assert_eq!(kind("notes.jpg").as_deref(), Some("unsupported"));
    assert_eq!(kind("huge.png").as_deref(), Some("too_large"));
    for file in ["truncated.jpg", "empty.jpg", "notes.jpg", "huge.png"] {
        let line = line_for(&lines, file);
        assert_eq!(line["status"], "error");
        assert!(!line["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(labels(line_for(&lines, "coffee.png"))[0], "espresso");
    assert_eq!(line_for(&lines, "chelsea.png")["status"], "ok");
}

#[test]
fn no_input_name_or_path_in_results_keys_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "zanzibar-holiday-marker";
    let photos = dir.path().join(format!("{marker}-album"));
    copy_photos(
        &photos,
        &[
            ("chelsea.png", &format!("{marker}-cat.png")),
            ("coffee.png", "kitchen/cup.png"),
        ],
    );
    std::fs::write(photos.join(format!("{marker}-broken.jpg")), b"not a jpeg").unwrap();
    let out = dir.path().join("out");

    let run = run_on(
        &photos,
        &out,
        &dir.path().join("key"),
        &["--format", "none", "--log", "debug"],
    );
    assert_eq!(run.status.code(), Some(3));
    let logs = String::from_utf8_lossy(&run.stderr);
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "logs were captured: {logs}"
    );
    for needle in [marker, "cup.png", "kitchen", photos.to_str().unwrap()] {
        assert!(!logs.contains(needle), "{needle:?} in logs:\n{logs}");
        for (key, body) in files_under(&out) {
            assert!(!key.contains(needle), "{needle:?} in object key {key}");
            assert!(
                !String::from_utf8_lossy(&body).contains(needle),
                "{needle:?} in object {key}"
            );
        }
    }
}

#[test]
fn embeddings_are_unit_length() {
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("astronaut.png", "a.png")]);
    let run = run_on(
        &dir.path().join("a.png"),
        &dir.path().join("single-out"),
        &dir.path().join("key"),
        &["--format", "json", "--analyses", "tags,embedding"],
    );
    // One photo given directly is that photo.
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(json_lines(&run)[0]["file"], "a.png");
    let manifest = dir.path().join("list.txt");
    std::fs::write(&manifest, "a.png\n").unwrap();
    let out = dir.path().join("out");
    let run = run_on(
        &manifest,
        &out,
        &dir.path().join("key"),
        &["--format", "json", "--analyses", "tags,embedding"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = json_lines(&run);
    let embedding: Vec<f64> = lines[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(embedding.len(), 1280);
    let norm = embedding.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    assert!(embedding.iter().any(|v| *v != 0.0));
}

#[test]
fn pseudonyms_are_stable_per_key_and_differ_across_keys() {
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let photos = dir.path().join("photos");
    let image_of = |key: &str| {
        let run = run_on(
            &photos,
            &dir.path().join("out"),
            &dir.path().join(key),
            &["--format", "json"],
        );
        assert!(run.status.success());
        json_lines(&run)[0]["image"].as_str().unwrap().to_owned()
    };
    let first = image_of("key-a");
    assert_eq!(first.len(), 64);
    assert_eq!(first, image_of("key-a"));
    assert_ne!(first, image_of("key-b"));
}

#[test]
fn expired_results_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let out = dir.path().join("out");
    let old = out.join("results/local/oldjob/t000001.jsonl");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"{}\n").unwrap();
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();

    let run = run_on(
        &dir.path().join("photos"),
        &out,
        &dir.path().join("key"),
        &[],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        !old.exists(),
        "a 48-hour-old result outlived the 24-hour retention"
    );
    assert_eq!(files_under(&out).len(), 1, "the new result stays");
}

#[test]
fn clear_errors_for_an_empty_folder_and_a_missing_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = tagfleet(&["run", empty.to_str().unwrap()], &dir.path().join("key"));
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no images found"));

    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let run = run_on(
        &dir.path().join("photos"),
        &dir.path().join("out"),
        &dir.path().join("key"),
        &["--ort-dylib", "/nonexistent/libonnxruntime.so.1"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("make venv") && stderr.contains("TAGFLEET_ORT_DYLIB"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out/results").exists(),
        "nothing half-written"
    );
}

#[test]
fn join_maps_results_back_to_refs_with_the_key_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[("chelsea.png", "cat.png"), ("coffee.png", "cup.png")],
    );
    let out = dir.path().join("out");
    let key = dir.path().join("key");
    let run = run_on(&photos, &out, &key, &["--format", "none"]);
    assert!(run.status.success());

    let join = |key: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .args([
                "join",
                "--source",
                photos.to_str().unwrap(),
                "--results",
                out.to_str().unwrap(),
                "--key-file",
            ])
            .arg(key)
            .output()
            .unwrap()
    };
    let joined = join(&key);
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let lines = json_lines(&joined);
    let root = photos.canonicalize().unwrap();
    let by_ref: std::collections::HashMap<String, String> = lines
        .iter()
        .map(|l| {
            (
                l["ref"].as_str().unwrap().to_owned(),
                l["tags"][0]["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        by_ref[&format!("file://{}/cup.png", root.display())],
        "espresso"
    );
    assert!(by_ref.contains_key(&format!("file://{}/cat.png", root.display())));

    let pseudonym = std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args([
            "pseudonym",
            "--key-file",
            key.to_str().unwrap(),
            photos.join("cup.png").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8(pseudonym.stdout).unwrap();
    let cup = lines
        .iter()
        .find(|l| l["tags"][0]["label"] == "espresso")
        .unwrap();
    assert!(
        printed.starts_with(cup["image"].as_str().unwrap()),
        "{printed}"
    );

    // Another key names nothing: the results alone cannot be linked to the files.
    let other = dir.path().join("other-key");
    std::fs::write(&other, format!("{}\n", "cd".repeat(32))).unwrap();
    let unjoined = join(&other);
    assert!(json_lines(&unjoined).iter().all(|l| l.get("ref").is_none()));
    assert!(String::from_utf8_lossy(&unjoined.stderr).contains("0 result lines joined"));
}

/// GPU ordinals that are not there stop start-up, saying what the machine has. Without a
/// GPU that is any ordinal; on a GPU machine GPU 0 runs and an ordinal past its GPUs is
/// refused, so the test checks the refusal on either kind of machine.
#[test]
fn asking_for_a_gpu_that_is_not_there_stops_start_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let out = dir.path().join("out");
    let photos = dir.path().join("photos");
    let args = [
        "run",
        photos.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let key = dir.path().join("key");
    let gpu = tagfleet(&[&args[..], &["--devices", "0"]].concat(), &key);
    let stderr = String::from_utf8_lossy(&gpu.stderr);
    let has_gpu = stderr.contains("executing on GPUs");
    if has_gpu {
        assert!(gpu.status.success(), "GPU 0 tags the photo: {stderr}");
        let missing = tagfleet(&[&args[..], &["--devices", "63"]].concat(), &key);
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert_eq!(missing.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("--devices 63")
                && stderr.contains("GPU(s)")
                && stderr.contains("--devices cpu"),
            "{stderr}"
        );
    } else {
        assert_eq!(gpu.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("--devices 0")
                && stderr.contains("no GPU")
                && stderr.contains("--devices cpu"),
            "{stderr}"
        );
        assert!(!out.join("results").exists(), "nothing was processed");
    }

    let cpu = tagfleet(&[&args[..], &["--devices", "cpu"]].concat(), &key);
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let all = tagfleet(&args, &key);
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(all.status.success(), "{stderr}");
    let expected = if has_gpu {
        "executing on GPUs"
    } else {
        "no GPU: executing on the CPU"
    };
    assert!(stderr.contains(expected), "{stderr}");
}

#[test]
fn exif_metadata_never_reaches_results_keys_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let rocket = std::fs::read(photo("rocket.jpg")).unwrap();
    let markers = [
        "ExifDescriptionMarker7781",
        "ExifArtistMarker7782",
        "ExifGpsDatumMarker7783",
    ];
    let jpeg = jpeg_with_exif(
        &rocket,
        &[(0x010E, markers[0]), (0x013B, markers[1])],
        &[(0x0012, markers[2])],
    );
    assert!(
        markers
            .iter()
            .all(|m| jpeg.windows(m.len()).any(|w| w == m.as_bytes()))
    );
    std::fs::write(photos.join("launch.jpg"), &jpeg).unwrap();
    let out = dir.path().join("out");

    let run = run_on(
        &photos,
        &out,
        &dir.path().join("key"),
        &["--format", "json", "--log", "debug"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = json_lines(&run);
    assert_eq!(
        lines[0]["status"], "ok",
        "metadata does not get in the way of the pixels"
    );
    let logs = String::from_utf8_lossy(&run.stderr);
    for marker in markers {
        assert!(!logs.contains(marker), "{marker} in logs");
        assert!(
            !String::from_utf8_lossy(&run.stdout).contains(marker),
            "{marker} on stdout"
        );
        for (key, body) in files_under(&out) {
            assert!(
                !key.contains(marker) && !String::from_utf8_lossy(&body).contains(marker),
                "{marker} in {key}"
            );
        }
    }
}

/// Results and the folders that hold them are the user's alone.
#[test]
fn results_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let out = dir.path().join("out");
    let run = run_on(
        &dir.path().join("photos"),
        &out,
        &dir.path().join("key"),
        &["--format", "none"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut stack = vec![out.clone()];
    let mut files = 0;
    while let Some(folder) = stack.pop() {
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: {mode:o}", folder.display());
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
                files += 1;
            }
        }
    }
    assert_eq!(files, 1, "one result object");
}

/// The sweep deletes tagfleet's own results past the retention, and nothing else: files
/// others put in the folder stay, however old, and are not named in the logs.
#[test]
fn the_sweep_deletes_only_results_tagfleet_wrote() {
    let dir = tempfile::tempdir().unwrap();
    copy_photos(dir.path(), &[("coffee.png", "photos/coffee.png")]);
    let out = dir.path().join("out");
    let ours = out.join("results/local/oldjob/t000001.jsonl");
    let foreign = [
        out.join("results/notes.txt"),
        out.join("results/local/oldjob/holiday-marker.jpg"),
        out.join("jobs/readme.md"),
    ];
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    for file in foreign.iter().chain([&ours]) {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"{}\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }

    let run = run_on(
        &dir.path().join("photos"),
        &out,
        &dir.path().join("key"),
        &["--format", "none"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        !ours.exists(),
        "tagfleet's own expired result outlived the retention"
    );
    for file in &foreign {
        assert!(file.exists(), "{} was deleted", file.display());
    }
    assert!(stderr.contains("left alone"), "{stderr}");
    assert!(!stderr.contains("marker"), "{stderr}");
}

/// A file name is the user's, but not always friendly: control characters and terminal
/// escape sequences in it are shown escaped, never sent to the terminal as they are.
#[test]
fn file_names_reach_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let evil = "evil\n\x1b[31mred.png";
    let csi = "csi\u{9b}2J.png";
    copy_photos(&photos, &[("coffee.png", evil), ("chelsea.png", csi)]);
    let out = dir.path().join("out");
    let key = dir.path().join("key");

    let table = run_on(&photos, &out, &key, &["--format", "table"]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8(table.stdout.clone()).unwrap();
    assert!(
        !table.stdout.contains(&0x1b),
        "a raw ESC on stdout: {text:?}"
    );
    assert!(!text.contains('\u{9b}'), "a raw CSI on stdout: {text:?}");
    assert_eq!(text.lines().count(), 2, "one line per image: {text:?}");
    assert!(
        text.contains(r"evil\n\u{1b}[31mred.png") && text.contains(r"csi\u{9b}2J.png"),
        "{text}"
    );

    // JSON keeps the names exact, with every control character escaped the JSON way.
    let json = run_on(&photos, &out, &key, &["--format", "json"]);
    assert!(json.status.success());
    assert!(!json.stdout.contains(&0x1b));
    assert!(!String::from_utf8_lossy(&json.stdout).contains('\u{9b}'));
    let lines = json_lines(&json);
    assert_eq!(labels(line_for(&lines, evil))[0], "espresso");
    assert_eq!(line_for(&lines, csi)["status"], "ok");
}

/// Links that lead nowhere (dangling, or in a loop) are images that cannot be read: error
/// records, counted like a broken file, and the photos around them are still tagged.
#[test]
fn dangling_and_looping_links_are_error_records_and_the_photos_are_tagged() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[("chelsea.png", "chelsea.png"), ("coffee.png", "coffee.png")],
    );
    symlink("loop.jpg", photos.join("loop.jpg")).unwrap();
    symlink("pong.png", photos.join("ping.png")).unwrap();
    symlink("ping.png", photos.join("pong.png")).unwrap();
    symlink("nowhere.jpg", photos.join("gone.jpg")).unwrap();
    // A folder that contains itself: never walked into.
    symlink(".", photos.join("again")).unwrap();

    let run = run_on(
        &photos,
        &dir.path().join("out"),
        &dir.path().join("key"),
        &["--format", "json"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "some images failed: {stderr}");
    assert!(
        stderr.contains("6 images") && stderr.contains("4 failed"),
        "{stderr}"
    );
    let lines = json_lines(&run);
    assert_eq!(lines.len(), 6, "{lines:?}");
    for file in ["loop.jpg", "ping.png", "pong.png", "gone.jpg"] {
        let line = line_for(&lines, file);
        assert_eq!(line["status"], "error", "{file}: {line}");
        assert_eq!(line["error"]["kind"], "fetch", "{file}: {line}");
    }
    assert_eq!(labels(line_for(&lines, "coffee.png"))[0], "espresso");
    assert_eq!(line_for(&lines, "chelsea.png")["status"], "ok");
}
