//! No image takes a worker down by memory: a folder of decode memory bombs (small files
//! whose pixels, metadata or canvas decode to hundreds of MB or GBs) next to a real photo
//! runs under a fixed peak RSS, each bomb an error record, the photo tagged.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use tagfleet_models::hostile;

use crate::common::*;

/// Peak RSS the whole `tagfleet run` may reach: the model, the runtime, two decode
/// threads and one real photo fit with room to spare (about 130 MiB in a debug build).
/// Before decode memory was budgeted from the header, this folder peaked at 1.5 GiB.
const PEAK_RSS_BOUND_MIB: u64 = 600;

#[test]
fn decode_memory_bombs_are_refused_under_a_fixed_rss_bound() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(&photos, &[("chelsea.png", "chelsea.png")]);
    let bombs: [(&str, Vec<u8>); 6] = [
        ("deep.png", hostile::png_rgb16(10_000, 10_000)),
        (
            "deep-rotated.png",
            hostile::png_rgb16_rotated(10_000, 10_000),
        ),
        ("icc.png", hostile::png_with_icc_profile(1 << 30)),
        ("claims.jpg", hostile::jpeg_claiming_size(60_000, 60_000)),
        ("canvas.gif", hostile::gif_with_canvas(16_000, 16_000)),
        ("canvas.webp", hostile::webp_animated_canvas(10_000, 10_000)),
    ];
    for (name, bytes) in &bombs {
        assert!(bytes.len() < 8 << 20, "{name} is {} bytes", bytes.len());
        std::fs::write(photos.join(name), bytes).unwrap();
    }

    let (code, peak_kib, stdout, stderr) = run_measured(
        &photos,
        &dir.path().join("out"),
        &dir.path().join("key"),
        &[
            "--format",
            "json",
            "--decode-threads",
            "2",
            "--devices",
            "cpu",
        ],
    );
    let peak_mib = peak_kib / 1024;
    eprintln!("peak RSS of tagfleet run: {peak_mib} MiB");
    assert_eq!(code, Some(3), "exit code 3 (some images failed): {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (name, _) in &bombs {
        let line = line_for(&lines, name);
        assert_eq!(line["status"], "error", "{name}: {line}");
        assert_eq!(line["error"]["kind"], "too_large", "{name}: {line}");
        let message = line["error"]["message"].as_str().unwrap();
        eprintln!("{name}: {message}");
        assert!(
            message.contains("limit") && !message.contains(name),
            "{name}: {message}"
        );
    }
    let chelsea = line_for(&lines, "chelsea.png");
    assert_eq!(chelsea["status"], "ok", "{chelsea}");
    assert!(!labels(chelsea).is_empty());
    assert!(
        peak_mib < PEAK_RSS_BOUND_MIB,
        "peak RSS {peak_mib} MiB, the bound is {PEAK_RSS_BOUND_MIB} MiB"
    );
}

/// `tagfleet run` as a child, reaped with `wait4` for its own resource usage: returns its
/// exit code, peak RSS in KiB (`ru_maxrss`, the kernel's high-water mark, so no peak
/// between two samples is missed), stdout and stderr.
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which reports its usage"
)]
fn run_measured(
    input: &Path,
    out: &Path,
    key_file: &Path,
    extra: &[&str],
) -> (Option<i32>, u64, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .arg("run")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--key-file")
        .arg(key_file)
        .args(extra)
        .current_dir(repo())
        .env_remove("TAGFLEET_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tagfleet");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 reaps our own child, which `child` is
    // then never asked to wait for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (
        code,
        usage.ru_maxrss as u64,
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}
