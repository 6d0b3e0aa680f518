//! The `callstream` binary: `keys create` against a running server's data directory.

use std::process::Command;

use crate::support::TestServer;

#[tokio::test]
async fn keys_create_works_while_the_server_runs() {
    let ts = TestServer::start().await;
    let bin = env!("CARGO_BIN_EXE_callstream");
    let data_dir = ts.dir.path().to_str().unwrap().to_owned();
    // The server runs on this test's runtime: the binary is awaited, never waited for with a
    // blocking call, or a write the server had begun would hold the database lock until the
    // binary gave up ("database is locked").
    let run = async |args: &[&str]| {
        let out = tokio::process::Command::new(bin)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let runtime = run(&[
        "keys",
        "create",
        "--data-dir",
        &data_dir,
        "--workspace",
        "newco",
        "--runtime",
        "--json",
    ])
    .await;
    let api = run(&[
        "keys",
        "create",
        "--data-dir",
        &data_dir,
        "--workspace",
        "newco",
        "--json",
    ])
    .await;
    assert_eq!(
        runtime["workspace_id"], api["workspace_id"],
        "the second key joins the same workspace"
    );
    assert!(api["auth_id"].as_str().unwrap().starts_with("MA"));
    let (api_key, runtime_key) = (
        api["key"].as_str().unwrap(),
        runtime["key"].as_str().unwrap(),
    );
    assert!(api_key.starts_with("pk_live_") && runtime_key.starts_with("rk_live_"));

    // The running server accepts the new keys at once, in the new workspace only.
    let (status, call) = ts
        .post("/v1/calls", runtime_key, &serde_json::json!({"phone": "+442071234567", "direction": "inbound", "transport": "webrtc"}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = ts
        .get(
            &format!("/v1/calls/{}", call["id"].as_str().unwrap()),
            api_key,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = ts
        .get(
            &format!("/v1/calls/{}", call["id"].as_str().unwrap()),
            &ts.acme.api,
        )
        .await;
    assert_eq!(status, 404);

    let out = tokio::process::Command::new(bin)
        .args(["keys", "create", "--data-dir", &data_dir, "--workspace", ""])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workspace must be"));

    // A directory with no database (a typo, or the wrong working directory) is refused, and
    // left as it was; with --init, a database is made there.
    let elsewhere = tempfile::tempdir().unwrap();
    let stray = elsewhere.path().join("callstream-data");
    let create = |init: bool| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["keys", "create", "--workspace", "newco", "--data-dir"])
            .arg(&stray);
        if init {
            cmd.arg("--init");
        }
        cmd.output()
    };
    let out = create(false).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no callstream database") && stderr.contains("--init"),
        "{stderr}"
    );
    assert!(!stray.exists(), "nothing was created");
    let out = create(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stray.join("callstream.db").exists());
}

/// The real binary end to end: `serve` configured by environment with JSON logs, `keys create`,
/// `simulate` through it, a stream opened with `?token=`, then SIGTERM: a clean exit, and no
/// key anywhere in what it logged.
#[tokio::test]
async fn serve_simulate_and_stop_the_real_binary() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let bin = env!("CARGO_BIN_EXE_callstream");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut server = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CALLSTREAM_DATA_DIR", &data_dir)
        .env("CALLSTREAM_LOG_FORMAT", "json")
        .env("CALLSTREAM_SSE_HEARTBEAT_SECS", "1")
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Drain stderr all along (a full pipe would block the server's logging), collecting it.
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(async move {
        let mut log = String::new();
        let mut addr_tx = Some(addr_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let entry: serde_json::Value =
                serde_json::from_str(&line).expect("every log line is JSON");
            if entry["fields"]["message"] == "callstream listening"
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(
                    entry["fields"]["addr"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let addr = tokio::time::timeout(std::time::Duration::from_secs(20), addr_rx)
        .await
        .expect("the server says where it listens within 20 s")
        .expect("the server is running");
    let base = format!("http://{addr}");

    let keys = |runtime: bool| {
        let mut cmd = Command::new(bin);
        cmd.args(["keys", "create", "--data-dir", &data_dir])
            .env("CALLSTREAM_WORKSPACE", "binco")
            .env("CALLSTREAM_KEY_JSON", "true");
        if runtime {
            cmd.env("CALLSTREAM_KEY_RUNTIME", "true");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (api, runtime) = (keys(false), keys(true));
    assert!(api.starts_with("pk_live_") && runtime.starts_with("rk_live_"));

    let sim = tokio::process::Command::new(bin)
        .arg("simulate")
        .env("CALLSTREAM_SERVER", &base)
        .env("CALLSTREAM_RUNTIME_KEY", &runtime)
        .env("CALLSTREAM_SIM_CALLS", "3")
        .env("CALLSTREAM_SIM_RATE", "50")
        .env("CALLSTREAM_SIM_SPEED", "inf")
        .output()
        .await
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sim.stdout).trim(),
        "3 calls played, 0 cut short by the stop, 0 failed"
    );

    let http = reqwest::Client::new();
    let list: serde_json::Value = http
        .get(format!("{base}/v1/calls"))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls = list["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    let id = calls[0]["id"].as_str().unwrap();
    let stream = http
        .get(format!(
            "{base}/v1/calls/{id}/transcript/stream?token={api}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    drop(stream);

    // Refused input on the command line.
    let bad = Command::new(bin)
        .args(["simulate", "--runtime-key", &runtime, "--rate", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("calls per second above 0"));

    let pid = server.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), server.wait())
        .await
        .expect("the server stops within 20 s of SIGTERM")
        .unwrap();
    let log = collector.await.unwrap();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("shutting down"));
    assert!(log.contains("/v1/calls"), "request lines are logged");
    assert!(
        !log.contains(&api) && !log.contains(&runtime),
        "a key reached the log"
    );
    assert!(!log.contains("pk_live_") && !log.contains("rk_live_"));
}

/// A port in use: one line that says what to do, no backtrace even with `RUST_BACKTRACE=1`, and
/// nothing created in the data directory. A misspelt variable is named, with the closest one.
#[tokio::test]
async fn start_up_errors_are_one_line_that_says_what_to_do() {
    let bin = env!("CARGO_BIN_EXE_callstream");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("fresh");
    let out = tokio::process::Command::new(bin)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(&data_dir)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("already in use") && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
    assert!(
        !data_dir.exists(),
        "nothing was created before the bind failed"
    );
    drop(taken);

    let out = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("CALLSTREAM_LISTN", "127.0.0.1:9")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CALLSTREAM_LISTN: not a setting; did you mean CALLSTREAM_LISTEN?"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Ctrl-C on the demo: it stops cleanly, without a warning per call as if something failed,
/// and leaves no call in progress behind (the next start finds every one ended).
#[tokio::test]
async fn the_demo_stops_quietly_and_ends_its_calls() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let bin = env!("CARGO_BIN_EXE_callstream");
    let dir = tempfile::tempdir().unwrap();
    let mut demo = tokio::process::Command::new(bin)
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut api = None;
    let mut printed = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await
    {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("API key") {
            api = line.split_whitespace().last().map(str::to_owned);
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let api = api.expect("the demo printed its key");
    // A newcomer can find the long call in the dashboard (listed by phone), and knows the data
    // directory that `keys create` needs.
    assert!(printed.contains("(phone +"), "{printed}");
    assert!(
        printed.contains(&format!(
            "Data directory (for `callstream keys … --data-dir`): {}",
            dir.path().display()
        )),
        "{printed}"
    );
    // Let a few of the flow's calls start (one every five seconds, plus the long one).
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let pid = demo.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), demo.wait_with_output())
        .await
        .expect("the demo stopped within 20 s")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "no warning on a clean stop:\n{stderr}"
    );

    // The next start finds every call ended.
    let mut config = callstream_server::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = callstream_server::start(config).await.unwrap();
    let calls: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/calls?limit=50", server.addr()))
        .bearer_auth(&api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls = calls["calls"].as_array().unwrap();
    assert!(calls.len() >= 2, "the long call and a flow call: {calls:?}");
    for call in calls {
        assert_ne!(call["status"], "in_progress", "{call}");
    }
    server.shutdown();
    let _ = server.wait().await;
}
