//! Shared helpers of the integration tests: real photos, broken files made from them, and
//! running the real binary.

#![allow(dead_code)]

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
