//! The scheduler's API against an abusive client, on the real binary: connections that
//! never finish their headers, more of them than the process has file descriptors.
//!
//! The limits are given as environment variables rather than flags, so the same test runs
//! (and fails for the right reason) against a binary that does not know them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fleet::{Fleet, Worker, free_port, http_get, service_env, write_secrets};

const ACME_TOKEN: &str = "acme-token-5e0c";

fn keys(dir: &Path) -> std::path::PathBuf {
    let keys = dir.join("keys");
    write_secrets(&keys, &[("acme", &"ab".repeat(32), Some(ACME_TOKEN))]);
    keys
}

/// Starts `tagfleet scheduler` on `fleet` with `envs`, its open-files limit lowered to
/// `max_files` when given.
fn scheduler(fleet: &Fleet, log: &Path, envs: &[(&str, &str)], max_files: Option<u64>) -> Worker {
    let (port, metrics_port) = (free_port(), free_port());
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagfleet"));
    command
        .arg("scheduler")
        .args(fleet.queue_args())
        .args(["--store", &format!("s3://{}/fleet", fleet.bucket)])
        .args(["--s3-endpoint", &service_env("TAGFLEET_TEST_S3_ENDPOINT")])
        .arg("--secrets")
        .arg(fleet.secrets())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(
            "TAGFLEET_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("TAGFLEET_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log_file);
    if let Some(max) = max_files {
        let limit = libc::rlimit {
            rlim_cur: max as libc::rlim_t,
            rlim_max: max as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    Worker {
        child: command.spawn().unwrap(),
        port,
        metrics_port,
        log: log.to_path_buf(),
    }
}

/// Descriptors the process holds now.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A connection that sent the start of a request and then nothing more.
fn half_sent(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Waiting: ")
        .unwrap();
    stream
}

/// Whether the server closed `stream`, waiting at most a generous minute.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_sent_connections_cannot_starve_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new("amqp", &keys(dir.path()), dir.path());
    fleet.store().await;
    // More idle connections than the process may open files, with a header deadline far
    // beyond the test: only the connection cap can keep /healthz answering.
    let mut capped = scheduler(
        &fleet,
        &dir.path().join("capped.log"),
        &[
            ("TAGFLEET_MAX_CONNECTIONS", "64"),
            ("TAGFLEET_HEADER_READ_TIMEOUT_SECS", "600"),
        ],
        Some(512),
    );
    capped.wait_ready().await;
    let pid = capped.child.id();
    let before = open_files(pid);
    let port = capped.port;
    let idle: Vec<TcpStream> = (0..600).map(|_| half_sent(port)).collect();
    let answer = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Some((200, "ok\n".to_owned())),
        "/healthz behind 600 idle connections:\n{}",
        capped.logs()
    );
    // The scheduler holds at most the cap of them (and closes the rest).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = open_files(pid);
        if open <= before + 64 + 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} files open with 600 idle connections, {before} before"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still up and still answering, the idle connections still held by the client.
    let answer = tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
        .await
        .unwrap();
    assert_eq!(answer.map(|(code, _)| code), Some(200));
    assert!(capped.child.try_wait().unwrap().is_none());
    drop(idle);
    drop(capped);

    // Under the cap, a connection whose headers do not arrive in time is closed.
    let mut timely = scheduler(
        &fleet,
        &dir.path().join("timely.log"),
        &[("TAGFLEET_HEADER_READ_TIMEOUT_SECS", "2")],
        None,
    );
    timely.wait_ready().await;
    let port = timely.port;
    let all_closed = tokio::task::spawn_blocking(move || {
        let mut idle: Vec<TcpStream> = (0..50).map(|_| half_sent(port)).collect();
        idle.iter_mut().all(closed_by_server)
    })
    .await
    .unwrap();
    assert!(
        all_closed,
        "half-sent requests stay open:\n{}",
        timely.logs()
    );
    let answer = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
        .await
        .unwrap();
    assert_eq!(answer.map(|(code, _)| code), Some(200));
}
