//! Shared helpers of the integration tests: real photos, broken files made from them, and
//! running the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A sample photo extracted by `make photos`.
pub fn photo(name: &str) -> PathBuf {
    let path = repo().join("samples/photos").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make photos` (make test does)",
        path.display()
    );
    path
}

/// Copies sample photos into `dir` under the given names.
pub fn copy_photos(dir: &Path, photos: &[(&str, &str)]) {
    for (src, dst) in photos {
        let dst = dir.join(dst);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(photo(src), dst).unwrap();
    }
}

/// The real PNG of `name` with its IHDR claiming `width`x`height` (CRC fixed, so only the
/// size is a lie).
pub fn png_claiming_size(name: &str, width: u32, height: u32) -> Vec<u8> {
    let mut png = std::fs::read(photo(name)).unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// `jpeg` with an EXIF block (inserted after SOI) holding ASCII fields of IFD0 and of a
/// GPS IFD, as cameras write them (ImageDescription 0x010E, Artist 0x013B, GPS tags).
pub fn jpeg_with_exif(jpeg: &[u8], ifd0: &[(u16, &str)], gps: &[(u16, &str)]) -> Vec<u8> {
    const ASCII: u16 = 2;
    const LONG: u16 = 4;
    let ifd_len = |n: usize| 2 + 12 * n + 4;
    let ifd0_at = 8;
    let gps_at = ifd0_at + ifd_len(ifd0.len() + 1);
    let mut data_at = gps_at + ifd_len(gps.len());
    let mut data = Vec::new();
    let mut entries = |fields: &[(u16, &str)], out: &mut Vec<u8>| {
        for (tag, text) in fields {
            let bytes = [text.as_bytes(), b"\0"].concat();
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&ASCII.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data_at as u32).to_le_bytes());
            data_at += bytes.len();
            data.extend_from_slice(&bytes);
        }
    };
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&(ifd0_at as u32).to_le_bytes());
    tiff.extend_from_slice(&((ifd0.len() + 1) as u16).to_le_bytes());
    entries(ifd0, &mut tiff);
    tiff.extend_from_slice(&0x8825u16.to_le_bytes()); // GPSInfo: offset of the GPS IFD
    tiff.extend_from_slice(&LONG.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&(gps_at as u32).to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&(gps.len() as u16).to_le_bytes());
    entries(gps, &mut tiff);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&data);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Runs `tagfleet` with a private key file and the given arguments.
pub fn tagfleet(args: &[&str], key_file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(args)
        .arg("--key-file")
        .arg(key_file)
        .current_dir(repo())
        .env_remove("TAGFLEET_LOG")
        .output()
        .expect("running tagfleet")
}

/// `tagfleet run INPUT --out OUT` with a private key and `extra` flags.
pub fn run_on(input: &Path, out: &Path, key_file: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tagfleet(&args, key_file)
}

/// Parsed stdout of `--format json`.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

pub fn line_for<'a>(lines: &'a [serde_json::Value], file: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["file"] == file)
        .unwrap_or_else(|| panic!("no line for {file}: {lines:?}"))
}

pub fn labels(line: &serde_json::Value) -> Vec<String> {
    line["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap().to_owned())
        .collect()
}

/// Every file under `dir`, relative paths and contents.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub mod fleet;
pub mod private_s3;
