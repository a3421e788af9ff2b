//! The scheduler's API against an abusive client, on the real binary: connections that
//! never finish their headers (more of them than the process has file descriptors),
//! manifests bigger than the scheduler should ever hold, and a tenant over its quotas.
//!
//! The limits are given as environment variables rather than flags, so the same test runs
//! (and fails for the right reason) against a binary that does not know them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::fleet::{
    Fleet, Worker, api, free_port, http_get, put, service_env, write_secrets,
};

const ACME_TOKEN: &str = "acme-token-5e0c";
const GLOBEX_TOKEN: &str = "globex-token-0b7e";
const INITECH_TOKEN: &str = "initech-token-91d4";

fn keys(dir: &Path) -> std::path::PathBuf {
    let keys = dir.join("keys");
    write_secrets(&keys, &[("acme", &"ab".repeat(32), Some(ACME_TOKEN))]);
    keys
}

/// Starts `tagfleet scheduler` with an in-process queue, the store `store` (with the S3
/// endpoint of the test services for `s3://`), the secrets in `keys` and `envs`; its
/// open-files limit lowered to `max_files` when given.
fn scheduler(
    store: &str,
    keys: &Path,
    log: &Path,
    envs: &[(&str, &str)],
    max_files: Option<u64>,
) -> Worker {
    let (port, metrics_port) = (free_port(), free_port());
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagfleet"));
    command
        .arg("scheduler")
        .args(["--queue", "memory", "--store", store])
        .arg("--secrets")
        .arg(keys.join("secrets.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(
            "TAGFLEET_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("TAGFLEET_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log_file);
    if store.starts_with("s3://") {
        command.args(["--s3-endpoint", &service_env("TAGFLEET_TEST_S3_ENDPOINT")]);
    }
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

/// A scheduler that needs no service: its queue in process, its store a folder.
fn local_scheduler(
    dir: &Path,
    keys: &Path,
    name: &str,
    envs: &[(&str, &str)],
    max_files: Option<u64>,
) -> Worker {
    let store = format!("file://{}", dir.join(name).display());
    let log = dir.join(format!("{name}.log"));
    scheduler(&store, keys, &log, envs, max_files)
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
    // More idle connections than the process may open files, with a header deadline far
    // beyond the test: only the connection cap can keep /healthz answering.
    let keys = keys(dir.path());
    let mut capped = local_scheduler(
        dir.path(),
        &keys,
        "capped",
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
    let mut timely = local_scheduler(
        dir.path(),
        &keys,
        "timely",
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

/// The most memory the process has held so far, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_over_a_limit_is_refused_without_being_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let fleet = Fleet::new("amqp", &keys, dir.path());
    let store = fleet.store().await;
    // The tenant may read the manifests' folder (allow-lists refuse anything else).
    let secrets = std::fs::read_to_string(fleet.secrets()).unwrap();
    let lists = format!("s3://{}/lists/", fleet.bucket);
    std::fs::write(
        fleet.secrets(),
        secrets.replace("key = ", &format!("sources = [\"{lists}\"]\nkey = ")),
    )
    .unwrap();
    let manifest = |refs: usize| {
        let mut text = String::with_capacity(refs * 48);
        for n in 0..refs {
            text.push_str(&format!("s3://{}/photos/{n:012}.jpg\n", fleet.bucket));
        }
        text.into_bytes()
    };
    // Over 48 MiB of refs, and 2 MiB of them.
    let huge = manifest(1_100_000);
    assert!(huge.len() > 48 << 20);
    put(&store, "lists/huge.txt", huge).await;
    put(&store, "lists/long.txt", manifest(40_000)).await;

    let mut scheduler = scheduler(
        &format!("s3://{}/fleet", fleet.bucket),
        &keys,
        &dir.path().join("scheduler.log"),
        &[
            ("TAGFLEET_MAX_MANIFEST_BYTES", "8388608"),
            ("TAGFLEET_MAX_JOB_IMAGES", "1000"),
        ],
        None,
    );
    scheduler.wait_ready().await;
    let pid = scheduler.child.id();
    let before = peak_memory(pid);
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(json!({"source": {"kind": "manifest", "uri": format!("{lists}huge.txt")}})),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("source.uri")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("over the limit"),
        "{answer}"
    );
    let grown = peak_memory(pid).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the scheduler's peak memory grew by {grown} bytes for a refused 48 MiB manifest"
    );
    // Under the size limit, over the ref limit: refused at the first ref too many.
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(json!({"source": {"kind": "manifest", "uri": format!("{lists}long.txt")}})),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("source")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("at most 1000"),
        "{answer}"
    );
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(ACME_TOKEN), None);
    assert_eq!(page["jobs"], json!([]), "no job was created");
}

/// URL refs that pass the address check without a connection (no worker runs here).
fn urls(n: usize) -> Value {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("https://93.184.216.34/catalog/{i}.jpg"))
        .collect();
    json!({"source": {"kind": "urls", "urls": urls}})
}

/// The quota a 429 names: (quota, limit, used, requested).
fn over(answer: &Value) -> (&str, u64, u64, u64) {
    let n = |f: &str| answer[f].as_u64().unwrap_or(u64::MAX);
    let quota = answer["quota"].as_str().unwrap_or("-");
    (quota, n("limit"), n("used"), n("requested"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_a_quota_is_answered_429_with_the_quota_its_limit_and_use() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    write_secrets(
        &keys,
        &[
            ("acme", &"ab".repeat(32), Some(ACME_TOKEN)),
            ("globex", &"cd".repeat(32), Some(GLOBEX_TOKEN)),
            ("initech", &"ef".repeat(32), Some(INITECH_TOKEN)),
        ],
    );
    let mut secrets = std::fs::read_to_string(keys.join("secrets.toml")).unwrap();
    secrets.push_str(
        "[tenants.acme.quotas]\nschedules = 1\njobs_in_flight = 2\nimages_in_flight = 5\n\
         [tenants.initech.quotas]\njobs_in_flight = 2\n",
    );
    std::fs::write(keys.join("secrets.toml"), secrets).unwrap();
    let mut scheduler = local_scheduler(dir.path(), &keys, "quotas", &[], None);
    scheduler.wait_ready().await;
    let port = scheduler.port;
    let post =
        |path: &str, token: &str, body: Value| api(port, "POST", path, Some(token), Some(body));

    // Jobs in flight (queued: no worker runs) and their images count against the quotas.
    let (code, first) = post("/v1/jobs", ACME_TOKEN, urls(2));
    assert_eq!(code, 201, "{first}");
    let (code, answer) = post("/v1/jobs", ACME_TOKEN, urls(4));
    assert_eq!(code, 429, "{answer}");
    assert_eq!(over(&answer), ("images_in_flight", 5, 2, 4), "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("images_in_flight")
    );
    let (code, answer) = post("/v1/jobs", ACME_TOKEN, urls(3));
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = post("/v1/jobs", ACME_TOKEN, urls(1));
    assert_eq!(code, 429, "{answer}");
    assert_eq!(over(&answer), ("jobs_in_flight", 2, 2, 1), "{answer}");
    // A job that ended (here: cancelled) is no longer in flight.
    let first = first["id"].as_str().unwrap();
    let (code, _) = api(
        port,
        "DELETE",
        &format!("/v1/jobs/{first}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 200);
    let (code, answer) = post("/v1/jobs", ACME_TOKEN, urls(1));
    assert_eq!(code, 201, "{answer}");

    // Schedules.
    let schedule = json!({"cron": "0 2 * * *", "job": urls(1)});
    let (code, answer) = post("/v1/schedules", ACME_TOKEN, schedule.clone());
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = post("/v1/schedules", ACME_TOKEN, schedule.clone());
    assert_eq!(code, 429, "{answer}");
    assert_eq!(over(&answer), ("schedules", 1, 1, 1), "{answer}");

    // Another tenant has quotas of its own (here the defaults).
    let (code, answer) = post("/v1/jobs", GLOBEX_TOKEN, urls(10));
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = post("/v1/schedules", GLOBEX_TOKEN, schedule);
    assert_eq!(code, 201, "{answer}");

    // Requests at once cannot all slip under a quota: two of six get in.
    let racing: Vec<_> = (0..6)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                api(port, "POST", "/v1/jobs", Some(INITECH_TOKEN), Some(urls(1))).0
            })
        })
        .collect();
    let mut codes = Vec::new();
    for r in racing {
        codes.push(r.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [201, 201, 429, 429, 429, 429]);
}
