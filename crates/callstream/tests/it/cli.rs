//! The `callstream` binary: `keys create` against a running server's data directory.

use std::process::Command;

use crate::support::TestServer;

#[tokio::test]
async fn keys_create_works_while_the_server_runs() {
    let ts = TestServer::start().await;
    let bin = env!("CARGO_BIN_EXE_callstream");
    let data_dir = ts.dir.path().to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
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
    ]);
    let api = run(&[
        "keys",
        "create",
        "--data-dir",
        &data_dir,
        "--workspace",
        "newco",
        "--json",
    ]);
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

    let out = Command::new(bin)
        .args(["keys", "create", "--data-dir", &data_dir, "--workspace", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workspace must be"));
}
