//! Helpers for tests against the real services that `scripts/services.sh start` runs on
//! 127.0.0.1 (RabbitMQ, SeaweedFS for S3, moto for SQS), found through its env variables.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tagfleet_contracts::S3Location;
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_io::ObjectStore;
use tagfleet_io::aws::Endpoint;
use tagfleet_io::store::{S3Options, S3Store};

use super::repo;

/// A service variable, or a failure that says how to start the services.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test services with `eval \"$(scripts/services.sh start)\"` (make test does)")
    })
}

/// A name no other test uses: queues and buckets are per test.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/secrets.toml` for tenants given as (name, hex key, bearer token).
pub fn write_secrets(dir: &Path, tenants: &[(&str, &str, Option<&str>)]) {
    use sha2::Digest;
    let mut text = String::new();
    for (name, key, token) in tenants {
        text.push_str(&format!("[tenants.{name}]\nkey = \"{key}\"\n"));
        if let Some(token) = token {
            let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
            text.push_str(&format!("token_sha256 = \"{hash}\"\n"));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("secrets.toml"), text).unwrap();
}

/// The model of the fleet's workers (the repo's model folder) and of its jobs by default.
pub const MODEL: &str = "efficientnet-lite0@1";

/// The fleet of one test: its queue, its bucket, its tenant key folder.
pub struct Fleet {
    pub queue: String,
    /// What the queue names derive from (--queue-name, or sqs://NAME).
    pub queue_name: String,
    pub bucket: String,
    /// The S3 its processes use: the shared one, unless the test runs its own
    /// ([`super::private_s3::PrivateS3`]).
    pub s3_endpoint: String,
    pub keys_dir: PathBuf,
    pub file_root: PathBuf,
    pub extra_queue_args: Vec<String>,
}

impl Fleet {
    /// `queue` is `amqp` or `sqs`.
    pub fn new(kind: &str, keys_dir: &Path, file_root: &Path) -> Self {
        let queue_name = unique("tasks");
        let (queue, extra_queue_args) = match kind {
            "amqp" => (service_env("TAGFLEET_TEST_AMQP_URL"), vec![]),
            "sqs" => (
                format!("sqs://{queue_name}"),
                vec![
                    "--sqs-endpoint".into(),
                    service_env("TAGFLEET_TEST_SQS_ENDPOINT"),
                    "--sqs-visibility-timeout-secs".into(),
                    "5".into(),
                ],
            ),
            other => panic!("unknown queue kind {other}"),
        };
        Self {
            queue,
            queue_name,
            bucket: unique("results"),
            s3_endpoint: service_env("TAGFLEET_TEST_S3_ENDPOINT"),
            keys_dir: keys_dir.to_path_buf(),
            file_root: file_root.to_path_buf(),
            extra_queue_args,
        }
    }

    /// The task queue of the workers' model, [`MODEL`].
    pub fn task_queue(&self) -> String {
        self.task_queue_of(MODEL)
    }

    /// The task queue of `model` (name@version).
    pub fn task_queue_of(&self, model: &str) -> String {
        tagfleet_contracts::routing::task_queue(&self.queue_name, model).unwrap()
    }

    /// The tenants secrets file in the keys folder (see [`write_secrets`]).
    pub fn secrets(&self) -> PathBuf {
        self.keys_dir.join("secrets.toml")
    }

    /// Lets every tenant of the secrets file read and write anywhere in this fleet's
    /// bucket (its store folder excepted, as always), unless the test set allow-lists
    /// of its own.
    fn grant_bucket(&self) {
        let path = self.secrets();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if text.contains("sources =") {
            return;
        }
        let folder = format!("\"s3://{}/\"", self.bucket);
        let mut granted = String::new();
        for line in text.lines() {
            granted.push_str(line);
            granted.push('\n');
            if line.starts_with("[tenants.") && !line.ends_with(".quotas]") {
                granted.push_str(&format!("sources = [{folder}]\noutputs = [{folder}]\n"));
            }
        }
        std::fs::write(&path, granted).unwrap();
    }

    pub fn queue_args(&self) -> Vec<String> {
        let mut args = vec![
            "--queue".into(),
            self.queue.clone(),
            "--queue-name".into(),
            self.queue_name.clone(),
            "--delivery-limit".into(),
            "3".into(),
        ];
        args.extend(self.extra_queue_args.iter().cloned());
        args
    }

    /// `tagfleet submit` of `source` for `tenant`; returns the job id.
    pub fn submit(&self, source: &Path, tenant: &str, extra: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .arg("submit")
            .arg(source)
            .args(["--tenant", tenant])
            .args(self.queue_args())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts `tagfleet worker`; its logs go to `log`.
    pub fn worker(&self, log: &Path, extra: &[&str]) -> Worker {
        self.worker_in(log, extra, &repo(), &[])
    }

    /// Starts `tagfleet worker` in `cwd` with extra environment variables.
    pub fn worker_in(
        &self,
        log: &Path,
        extra: &[&str],
        cwd: &Path,
        envs: &[(&str, &Path)],
    ) -> Worker {
        let mut args: Vec<String> = vec!["--file-root".into()];
        args.push(self.file_root.display().to_string());
        args.extend(
            ["--intra-threads", "1", "--decode-threads", "1"]
                .iter()
                .chain(extra)
                .map(|a| a.to_string()),
        );
        let envs: Vec<(&str, &OsStr)> = envs.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        let port = free_port();
        // The worker serves /metrics next to /healthz and /readyz.
        self.spawn("worker", &args, log, cwd, &envs, port, port)
    }

    /// Starts `tagfleet scheduler` on this fleet's queue and bucket; its logs go to `log`
    /// (appended, so a restarted scheduler keeps one log).
    pub fn scheduler(&self, log: &Path, extra: &[&str]) -> Worker {
        self.scheduler_with_env(log, extra, &[])
    }

    /// As [`Fleet::scheduler`], with extra environment variables.
    pub fn scheduler_with_env(&self, log: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Worker {
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        // The scheduler's metrics have a listener of their own, apart from the API.
        let metrics_port = free_port();
        let metrics_listen = format!("127.0.0.1:{metrics_port}");
        let mut all: Vec<(&str, &OsStr)> =
            vec![("TAGFLEET_METRICS_LISTEN", metrics_listen.as_ref())];
        all.extend(envs.iter().map(|(k, v)| (*k, OsStr::new(v))));
        self.spawn(
            "scheduler",
            &args,
            log,
            &repo(),
            &all,
            free_port(),
            metrics_port,
        )
    }

    /// Starts `tagfleet <command>` with this fleet's queue, store and secrets, its API (or
    /// operations port) on `port`.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        command: &str,
        extra: &[String],
        log: &Path,
        cwd: &Path,
        envs: &[(&str, &OsStr)],
        port: u16,
        metrics_port: u16,
    ) -> Worker {
        self.grant_bucket();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .arg(command)
            .args(self.queue_args())
            .args(["--store", &format!("s3://{}/fleet", self.bucket)])
            .args(["--s3-endpoint", &self.s3_endpoint])
            .arg("--secrets")
            .arg(self.secrets())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            // A --log in `extra` wins over this.
            .env("TAGFLEET_LOG", "info,ort=warn,tagfleet_scheduler=debug")
            .envs(envs.iter().copied())
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Worker {
            child,
            port,
            metrics_port,
            log: log.to_path_buf(),
        }
    }

    pub async fn store(&self) -> S3Store {
        let location = S3Location::parse(&format!("s3://{}/fleet", self.bucket)).unwrap();
        let mut options = S3Options::at(location);
        options.endpoint = Endpoint {
            url: Some(self.s3_endpoint.clone()),
            region: None,
        };
        options.path_style = true;
        let store = S3Store::connect(options).await;
        store.ensure_bucket().await.unwrap();
        store
    }

    /// Waits until `tasks` result objects of `job` exist; returns their lines. `worker`'s
    /// logs go into the failure message.
    pub async fn wait_for_results(
        &self,
        store: &S3Store,
        tenant: &str,
        job: &str,
        tasks: usize,
        worker: &Worker,
    ) -> Vec<serde_json::Value> {
        let prefix = job_results_prefix(tenant, job);
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let objects = store.list(&prefix).await.unwrap();
            if objects.len() >= tasks {
                let mut lines = Vec::new();
                for o in objects {
                    let body = store.get(&o.key).await.unwrap();
                    lines.extend(
                        String::from_utf8(body)
                            .unwrap()
                            .lines()
                            .map(|l| serde_json::from_str(l).unwrap()),
                    );
                }
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {tasks} result objects after 180 s; worker logs:\n{}",
                objects.len(),
                worker.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A running service process (worker or scheduler).
pub struct Worker {
    pub child: Child,
    pub port: u16,
    /// Where its /metrics are: the worker's operations port, the scheduler's own listener.
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Worker {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the process exited early ({status}):\n{}", self.logs());
            }
            if http_get(self.port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker still running after {limit:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, None, None)
}

/// A plain HTTP/1.0 request on loopback with an optional bearer token and JSON body:
/// (status, body). `None` when nothing answered.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).ok()?;
    // A refused body may be cut off by the server: the status still comes back.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// A JSON API call that must answer: (status, parsed body or Null).
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (code, text) = http(port, method, path, token, bytes.as_deref())
        .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Writes an object as a user would (no SSE asked). SeaweedFS sometimes answers a fresh
/// bucket's first writes with a retryable 500 under load: a few bounded retries.
pub async fn put(store: &S3Store, key: &str, body: Vec<u8>) {
    for attempt in 1..=5 {
        let sent = store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(key)
            .body(body.clone().into())
            .send()
            .await;
        match sent {
            Ok(_) => return,
            Err(e) if attempt < 5 => {
                eprintln!("put {key} failed ({e:?}); retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("put {key}: {e:?}"),
        }
    }
}

/// Uploads every file of `photos` under `prefix` (`copies` times each, numbered when more
/// than one); returns the S3 prefix URI.
pub async fn upload(store: &S3Store, photos: &Path, prefix: &str, copies: usize) -> String {
    for entry in std::fs::read_dir(photos).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for copy in 0..copies {
            let key = if copies == 1 {
                format!("{prefix}{name}")
            } else {
                format!("{prefix}{copy:03}-{name}")
            };
            put(store, &key, std::fs::read(&path).unwrap()).await;
        }
    }
    format!("s3://{}/{prefix}", store.bucket())
}

/// Creates a job through the API; returns its id.
pub fn create_job(scheduler: &Worker, token: &str, spec: serde_json::Value) -> String {
    let (code, job) = api(scheduler.port, "POST", "/v1/jobs", Some(token), Some(spec));
    assert_eq!(code, 201, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

/// Polls a job until its state is one of `states` (`final` for any final state); returns
/// its view. Fails with the logs of `logs` after 180 s.
pub async fn wait_state(
    scheduler: &Worker,
    token: &str,
    id: &str,
    states: &[&str],
    logs: &[&Worker],
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (code, job) = api(
            scheduler.port,
            "GET",
            &format!("/v1/jobs/{id}"),
            Some(token),
            None,
        );
        assert_eq!(code, 200, "{job}");
        let state = job["state"].as_str().unwrap_or("");
        let is_final = !["queued", "running"].contains(&state);
        if states.contains(&state) || (states.contains(&"final") && is_final) {
            return job;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|w| w.logs()).collect();
            panic!(
                "job {id} is {job}, not {states:?}:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that an object of the store says it is encrypted at rest (SSE-S3).
pub async fn assert_encrypted(store: &S3Store, key: &str) {
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(store.object_key(key))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256),
        "{key}"
    );
}
