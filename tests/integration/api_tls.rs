//! The scheduler's API over TLS, on the real binary with a certificate made at test time
//! (a CA and a server certificate it signs, by the `openssl` command line), and the
//! clients' warning before a token travels in clear text.
//!
//! The certificate reaches the scheduler through environment variables, so the test
//! also runs (and fails for the right reason) against a binary that knows no TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fleet::{Worker, free_port, http_get, write_secrets};

const TOKEN: &str = "acme-token-7a21";

/// A CA, and a certificate for localhost and 127.0.0.1 signed by it: (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed by scripts/services.sh");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=tagfleet test CA",
            ][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=localhost"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        path("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

/// Starts `tagfleet scheduler` with an in-process queue, a folder store and `envs`.
fn scheduler(dir: &Path, name: &str, envs: &[(&str, &Path)]) -> Worker {
    let keys = dir.join("keys");
    write_secrets(&keys, &[("acme", &"ab".repeat(32), Some(TOKEN))]);
    let (port, metrics_port) = (free_port(), free_port());
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .arg("scheduler")
        .args(["--queue", "memory", "--store"])
        .arg(format!("file://{}", dir.join(name).display()))
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
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Worker {
        child,
        port,
        metrics_port,
        log,
    }
}

/// `tagfleet status` of the scheduler at `url`.
fn status(url: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(["status", "--scheduler", url])
        .args(extra)
        .env("TAGFLEET_TOKEN", TOKEN)
        .env_remove("TAGFLEET_CA_FILE")
        .output()
        .unwrap()
}

fn client(ca: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        builder = builder.tls_certs_merge([cert]);
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_over_https_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let mut scheduler = scheduler(
        dir.path(),
        "tls",
        &[("TAGFLEET_TLS_CERT", &cert), ("TAGFLEET_TLS_KEY", &key)],
    );
    let base = format!("https://localhost:{}", scheduler.port);
    let trusting = client(Some(&ca));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = scheduler.child.try_wait().unwrap() {
            panic!("the scheduler exited ({status}):\n{}", scheduler.logs());
        }
        match trusting.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no answer over https after 60 s:\n{}",
            scheduler.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = trusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "ok\n");

    // A client that does not trust the CA gets no answer; plain HTTP gets none either.
    assert!(
        client(None)
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    let port = scheduler.port;
    let plain = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
        .await
        .unwrap();
    assert!(
        plain.as_ref().is_none_or(|(code, _)| *code != 200),
        "plain HTTP answered: {plain:?}"
    );

    // `tagfleet status` trusts the CA it is given, and has nothing to warn of.
    let out = status(&base, &["--ca-file", ca.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("JOB"));
    assert!(!stderr.contains("warning"), "{stderr}");
    let out = status(&base, &[]);
    assert!(
        !out.status.success(),
        "a certificate from an unknown CA was trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_broken_tls_file_stops_start_up_naming_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = certificates(dir.path());
    let missing = dir.path().join("missing.pem");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (name, cert, key, flag) in [
        ("no-cert", &missing, &key, "--tls-cert"),
        ("no-key", &cert, &missing, "--tls-key"),
        ("bad-key", &cert, &broken, "--tls-key"),
    ] {
        let mut scheduler = scheduler(
            dir.path(),
            name,
            &[("TAGFLEET_TLS_CERT", cert), ("TAGFLEET_TLS_KEY", key)],
        );
        let status = scheduler.wait_exit(Duration::from_secs(60)).await;
        assert!(!status.success(), "{name}: started");
        let logs = scheduler.logs();
        assert!(logs.contains(flag), "{name}: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_warn_before_a_token_goes_in_clear_text_off_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = scheduler(dir.path(), "plain", &[]);
    plain.wait_ready().await;
    // A name that resolves nowhere: the warning comes before any connection.
    for out in [
        status("http://example-host:8080", &[]),
        Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .args(["submit", "s3://media/2026/"])
            .args(["--scheduler", "http://example-host:8080"])
            .env("TAGFLEET_TOKEN", TOKEN)
            .output()
            .unwrap(),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning") && stderr.contains("clear text"),
            "{stderr}"
        );
    }
    // On this machine, no warning.
    let out = status(&format!("http://127.0.0.1:{}", plain.port), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
