//! A SeaweedFS of one test's own, for tests that take S3 away: the shared one
//! (`scripts/services.sh`) serves every other test and must stay up.
//!
//! ```ignore
//! let mut s3 = PrivateS3::start_new().await; // S3 answers on s3.endpoint()
//! s3.stop();                                 // killed: connections are refused
//! s3.start().await;                          // back, same data and ports
//! ```
//!
//! It runs `weed mini` (the binary `TAGFLEET_TEST_WEED_BIN` names) with the flags
//! `scripts/services.sh` uses, on free loopback ports, with its data in a temporary
//! folder that lives as long as the value. The credentials are the shared one's
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` of the services' env). Dropping it kills
//! the server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fleet::{http_get, service_env};

/// How long a start may take before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);

/// What SeaweedFS listens on; each also takes its port + 10000 for gRPC.
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    master: u16,
    volume: u16,
    filer: u16,
    admin: u16,
}

impl Ports {
    fn all(&self) -> [u16; 5] {
        [self.s3, self.master, self.volume, self.filer, self.admin]
    }
}

pub struct PrivateS3 {
    dir: tempfile::TempDir,
    ports: Ports,
    child: Option<Child>,
}

impl PrivateS3 {
    /// Starts a new, empty SeaweedFS; returns once S3 answers and can store objects.
    pub async fn start_new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let config = serde_json::json!({"identities": [{
            "name": "tagfleet",
            "credentials": [{
                "accessKey": service_env("AWS_ACCESS_KEY_ID"),
                "secretKey": service_env("AWS_SECRET_ACCESS_KEY"),
            }],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]});
        std::fs::write(dir.path().join("s3.json"), config.to_string()).unwrap();
        let mut taken = Vec::new();
        let mut port = || {
            let p = free_port_pair(&taken);
            taken.push(p);
            p
        };
        let ports = Ports {
            s3: port(),
            master: port(),
            volume: port(),
            filer: port(),
            admin: port(),
        };
        let mut s3 = Self {
            dir,
            ports,
            child: None,
        };
        s3.start().await;
        s3
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// Kills the server (SIGKILL, as a crash or a lost node would): from now on its ports
    /// refuse connections. Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // weed leaves its gRPC sockets in /tmp, named by port; a start on the same ports
        // must not find them.
        let grpc: Vec<String> = self
            .ports
            .all()
            .iter()
            .map(|p| format!("-grpc-{}.sock", p + 10000))
            .collect();
        for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("seaweedfs-") && grpc.iter().any(|g| name.ends_with(g)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Starts the server (again) on the same data and ports; returns once S3 answers and
    /// a volume server has registered (before that, writes fail).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "the private S3 is running already");
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let p = self.ports;
        let path = |name: &str| dir.join(name).display().to_string();
        let child = Command::new(service_env("TAGFLEET_TEST_WEED_BIN"))
            .arg(format!("-logdir={}", path("log")))
            .arg("mini")
            .arg(format!("-dir={}", path("data")))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.config={}", path("s3.json")))
            .arg(format!("-filer.localSocket={}", path("filer.sock")))
            .arg(format!("-s3.localSocket={}", path("s3.sock")))
            .arg(format!("-admin.port={}", p.admin))
            .args(["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-webdav=false", "-master.telemetry=false"])
            .args(["-master.volumeSizeLimitMB=16", "-volume.max=100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting weed mini");
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("weed mini exited ({status}):\n{}", self.logs());
            }
            let s3_answers = http_get(p.s3, "/").is_some();
            let volumes = || {
                http_get(p.master, "/dir/status").is_some_and(|(_, body)| body.contains("\"Url\""))
            };
            if s3_answers && volumes() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private S3 is not up after {START_LIMIT:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the server wrote to stdout and stderr, all starts together.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("weed.out")
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that is free, and whose gRPC twin (+10000) is free too, other than
/// those already `taken`. Both lie below Linux's ephemeral range (32768 and up), so no
/// outgoing connection takes one while the server is down.
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let p = 10000 + (uuid::Uuid::new_v4().as_u128() % 12768) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !taken.contains(&p) && free(p) && free(p + 10000) {
            return p;
        }
    }
    panic!("no free port pair in 10000..22768 and 20000..32768");
}
