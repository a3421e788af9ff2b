//! The worker holds image bytes and the scheduler refs and tenant keys in memory: neither
//! may leave a core dump, nor let another process of its user open its memory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::fleet::{Fleet, Worker, free_port, write_secrets};
use crate::common::repo;

/// The Linux capability that lets a process open any other's memory.
const CAP_SYS_PTRACE: libc::c_ulong = 19;

/// Runs `command` without CAP_SYS_PTRACE. Opening another process's memory takes either
/// that capability or a target that is dumpable and holds no capability the opener lacks,
/// so between two processes started this way the dumpable flag alone decides. Not root:
/// there is nothing to drop (the drop fails with EPERM) and the same holds.
fn without_ptrace(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0);
            Ok(())
        })
    }
}

/// Whether another process of the same user opens `pid`'s memory (what a debugger reads).
fn memory_opens(pid: u32) -> bool {
    without_ptrace(Command::new("sh").args(["-c", "exec 3<\"/proc/$0/mem\"", &pid.to_string()]))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `Max core file size` of `pid`: (soft, hard).
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .unwrap();
    let mut fields = line.split_whitespace().map(str::to_owned);
    (fields.next().unwrap(), fields.next().unwrap())
}

/// Starts `tagfleet <command>` on `fleet` as the shared helpers do, without CAP_SYS_PTRACE.
fn start(fleet: &Fleet, command: &str, extra: &[&str], log: &Path) -> Worker {
    let port = free_port();
    // The scheduler's metrics listener (the worker serves them on --listen).
    let metrics_port = free_port();
    let log_file = std::fs::File::create(log).unwrap();
    let child = without_ptrace(
        Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .arg(command)
            .args(fleet.queue_args())
            .args(["--store", &format!("s3://{}/fleet", fleet.bucket)])
            .args(["--s3-endpoint", &fleet.s3_endpoint])
            .arg("--secrets")
            .arg(fleet.secrets())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env(
                "TAGFLEET_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .args(extra)
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(log_file),
    )
    .spawn()
    .unwrap();
    Worker {
        child,
        port,
        metrics_port: if command == "scheduler" {
            metrics_port
        } else {
            port
        },
        log: log.to_path_buf(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_and_the_scheduler_dump_no_core_and_keep_their_memory_closed() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let keys = dir.path().join("keys");
    write_secrets(&keys, &[("acme", &"ab".repeat(32), Some("acme-token"))]);
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;

    // The check sees into an ordinary process started the same way.
    let mut control = without_ptrace(Command::new("sleep").arg("60"))
        .spawn()
        .unwrap();
    let control_opens = memory_opens(control.id());
    let _ = control.kill();
    let _ = control.wait();
    assert!(control_opens, "the check opens no process's memory here");

    let mut scheduler = start(&fleet, "scheduler", &[], &dir.path().join("scheduler.log"));
    let root = photos.display().to_string();
    let worker_args = [
        "--file-root",
        &root,
        "--intra-threads",
        "1",
        "--decode-threads",
        "1",
    ];
    let mut worker = start(
        &fleet,
        "worker",
        &worker_args,
        &dir.path().join("worker.log"),
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;
    for (name, process) in [("scheduler", &scheduler), ("worker", &worker)] {
        let pid = process.child.id();
        assert_eq!(
            core_limit(pid),
            ("0".into(), "0".into()),
            "{name}: core file size (soft, hard)"
        );
        assert!(!memory_opens(pid), "{name}: dumpable, its memory opens");
        assert!(
            !process
                .logs()
                .contains("core dumps could not be turned off"),
            "{name}: {}",
            process.logs()
        );
    }
}
