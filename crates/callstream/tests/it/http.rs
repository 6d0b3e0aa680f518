//! The HTTP/1 layer, over raw sockets: SSE stream requests are answered by callstream's own
//! stream path (chunked, `connection: close`), everything else by hyper, and odd requests on
//! either side are refused without harming anything else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestServer, transcription, wait_for_metric};

const OPEN: &str = "callstream_open_streams{surface=\"native_transcript_sse\"}";

async fn connect(ts: &TestServer) -> TcpStream {
    TcpStream::connect(ts.server().addr()).await.unwrap()
}

/// Reads until `done` says the bytes so far are enough, or the server closes; 10 s at most.
async fn read_until(tcp: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&String::from_utf8_lossy(&seen)) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; so far: {}", String::from_utf8_lossy(&seen)));
    String::from_utf8_lossy(&seen).into_owned()
}

async fn read_to_close(tcp: &mut TcpStream) -> String {
    read_until(tcp, |_| false).await
}

fn stream_get(ts: &TestServer, id: &str, version: &str) -> String {
    format!(
        "GET /v1/calls/{id}/transcript/stream HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        ts.acme.api
    )
}

#[tokio::test]
async fn an_sse_stream_is_chunked_and_closes_with_the_call() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut tcp = connect(&ts).await;
    // The head arrives in pieces: it is read until complete.
    let request = stream_get(&ts, id, "1.1");
    let (a, b) = request.split_at(20);
    tcp.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b.as_bytes()).await.unwrap();
    let head = read_until(&mut tcp, |s| s.contains("\r\n\r\n")).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for field in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "cache-control: no-cache",
        "date: ",
    ] {
        assert!(lower.contains(field), "{field} missing in {head}");
    }
    ts.ingest(id, transcription("user", "Hello", true, "trn_1"))
        .await;
    ts.ingest(id, crate::support::completed()).await;
    let rest = read_to_close(&mut tcp).await;
    let body = &(head + &rest)[..];
    let body = &body[body.find("\r\n\r\n").unwrap() + 4..];
    // Every chunk is `<hex size>\r\n<data>\r\n`, and the body ends with the zero chunk.
    let mut data = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            assert_eq!(after, "\r\n", "nothing after the last chunk");
            break;
        }
        data.push_str(&after[..size]);
        assert_eq!(&after[size..size + 2], "\r\n");
        rest = &after[size + 2..];
    }
    assert!(data.contains("\"text\":\"Hello\""), "{data}");
}

#[tokio::test]
async fn http_1_0_gets_the_stream_delimited_by_the_close() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut tcp = connect(&ts).await;
    tcp.write_all(stream_get(&ts, id, "1.0").as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut tcp, |s| s.contains("\r\n\r\n")).await;
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    ts.ingest(id, transcription("user", "Plain", true, "trn_1"))
        .await;
    ts.ingest(id, crate::support::completed()).await;
    let rest = read_to_close(&mut tcp).await;
    assert!(rest.contains("data: {"), "{rest}");
    assert!(rest.contains("\"text\":\"Plain\""), "{rest}");
}

#[tokio::test]
async fn refusals_on_a_stream_path_are_whole_json_responses() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut tcp = connect(&ts).await;
    tcp.write_all(
        format!("GET /v1/calls/{id}/transcript/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pk_live_nope\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let all = read_to_close(&mut tcp).await;
    assert!(all.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{all}");
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a content-length");
    assert_eq!(length.parse::<usize>().unwrap(), body.len());
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error_code"], "unauthorized");
}

#[tokio::test]
async fn other_requests_keep_their_connection_alive_through_hyper() {
    let ts = TestServer::start().await;
    let mut tcp = connect(&ts).await;
    for _ in 0..3 {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let reply = read_until(&mut tcp, |s| s.contains("\r\n\r\n") && s.ends_with('}')).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    }
    // Two requests in one write (pipelined): hyper answers both, in order.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let replies = read_until(&mut tcp, |s| {
        s.contains("404 Not Found") && s.ends_with('}')
    })
    .await;
    assert!(replies.starts_with("HTTP/1.1 200 OK\r\n"), "{replies}");
}

#[tokio::test]
async fn a_stream_request_with_one_pipelined_behind_it_is_served_by_hyper() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut tcp = connect(&ts).await;
    let two = format!(
        "{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        stream_get(&ts, id, "1.1")
    );
    tcp.write_all(two.as_bytes()).await.unwrap();
    let head = read_until(&mut tcp, |s| s.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    ts.ingest(id, crate::support::completed()).await;
    // The stream ends with the call, then the pipelined request is answered on the same socket.
    let rest = read_until(&mut tcp, |s| s.contains("\"status\"")).await;
    assert!(rest.contains("HTTP/1.1 200 OK"), "{rest}");
}

#[tokio::test]
async fn odd_heads_are_refused_and_nothing_else_is_harmed() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut watcher = connect(&ts).await;
    watcher
        .write_all(stream_get(&ts, id, "1.1").as_bytes())
        .await
        .unwrap();
    read_until(&mut watcher, |s| s.contains("\r\n\r\n")).await;

    // A head over 8 KiB on a stream path.
    let mut tcp = connect(&ts).await;
    let big = format!(
        "GET /v1/calls/{id}/transcript/stream HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10 * 1024)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let reply = read_to_close(&mut tcp).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.80}");
    // Every refusal a client can get is the API's JSON, these included (hyper's own are empty).
    let json_body = |reply: &str| -> serde_json::Value {
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        serde_json::from_str(body).unwrap()
    };
    assert_eq!(json_body(&reply)["error_code"], "headers_too_large");

    // Binary garbage, and a head with a line that is not a header field.
    for garbage in [
        b"\x16\x03\x01\x00\xff\r\n\r\n".to_vec(),
        b"GET /v1/calls HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n".to_vec(),
    ] {
        let mut tcp = connect(&ts).await;
        tcp.write_all(&garbage).await.unwrap();
        let reply = read_to_close(&mut tcp).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:.80}");
        let body = json_body(&reply);
        assert_eq!(body["error_code"], "invalid_request");
        assert_eq!(body["message"], "the request head is not valid HTTP/1.1");
    }

    // The same on a kept-alive connection, where hyper reads the later heads: after a served
    // request, a malformed head and an oversized one are refused in the API's JSON too (hyper's
    // own answers have empty bodies).
    for (later, status, code) in [
        (
            b"GET /v1/calls HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n".to_vec(),
            "400",
            "invalid_request",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(10 * 1024)
            )
            .into_bytes(),
            "431",
            "headers_too_large",
        ),
    ] {
        let mut tcp = connect(&ts).await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let first = read_until(&mut tcp, |s| s.contains("\r\n\r\n") && s.ends_with('}')).await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        let _ = tcp.write_all(&later).await;
        let reply = read_to_close(&mut tcp).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{reply:.80}"
        );
        assert_eq!(json_body(&reply)["error_code"], code, "{reply}");
    }

    // A stream path with a request body is not a stream request: hyper serves it (GET only).
    let mut tcp = connect(&ts).await;
    tcp.write_all(
        format!("POST /v1/calls/{id}/transcript/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_until(&mut tcp, |s| s.ends_with('}')).await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply:.80}");

    // The open stream saw none of it and still works.
    ts.ingest(id, transcription("user", "still here", true, "trn_1"))
        .await;
    let more = read_until(&mut watcher, |s| s.contains("still here")).await;
    assert!(more.contains("still here"));
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_stream_at_once() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut tcp = connect(&ts).await;
        tcp.write_all(stream_get(&ts, id, "1.1").as_bytes())
            .await
            .unwrap();
        read_until(&mut tcp, |s| s.contains("\r\n\r\n")).await;
        clients.push(tcp);
    }
    assert!(wait_for_metric(&ts, OPEN, |v| v == 5.0).await);
    // They leave without a word, and no event has to be written for that to be noticed.
    drop(clients);
    assert!(
        wait_for_metric(&ts, OPEN, |v| v == 0.0).await,
        "streams still open after their clients left"
    );
}

/// A POST of `body` to `path` with `key`, its head first and its body 50 ms later, as a client
/// streaming a body sends it.
async fn post_slowly(tcp: &mut TcpStream, path: &str, key: &str, body: &str) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tcp.write_all(body.as_bytes()).await;
}

#[tokio::test]
async fn a_refusal_sent_before_the_body_arrived_says_connection_close() {
    let ts = TestServer::start().await;
    let addr = ts.server().addr();
    let body = r#"{"phone": "+14155550123", "direction": "inbound", "transport": "sip"}"#;

    // A wrong key is refused before the body is read: the answer says the connection closes,
    // and it does.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    post_slowly(&mut tcp, "/v1/calls", "rk_live_wrong", body).await;
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // An accepted request whose body was read keeps the connection for the next one.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    post_slowly(&mut tcp, "/v1/calls", &ts.acme.runtime, body).await;
    let answer = read_until(&mut tcp, |s| s.contains("\"live_conversation_token\"")).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    post_slowly(&mut tcp, "/v1/calls", &ts.acme.runtime, body).await;
    let again = read_until(&mut tcp, |s| s.contains("\"live_conversation_token\"")).await;
    assert!(
        again.starts_with("HTTP/1.1 201"),
        "the reused connection answered: {again}"
    );
}

/// Each request's log line has its id (answered as `X-Request-Id`), rounded timing, the
/// workspace once known, and a refusal's `error_code`, never the key.
#[tokio::test]
async fn request_lines_carry_an_id_the_workspace_and_the_error_code() {
    let ts = TestServer::start().await;
    let refused = ts
        .http
        .get(ts.url("/v1/calls"))
        .bearer_auth("pk_live_not_a_real_key_for_the_log_line_1")
        .header("x-request-id", "edge-7f3a.1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["x-request-id"],
        "edge-7f3a.1",
        "the caller's id is kept"
    );
    let served = ts
        .http
        .get(ts.url("/v1/calls"))
        .bearer_auth(&ts.acme.api)
        .header("x-request-id", "not a token; has spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let id = served.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_") && id.len() == 20, "a new id: {id}");
    let (_, workspace) = ts.get("/v1/workspace", &ts.acme.api).await;
    let workspace = workspace["id"].as_str().unwrap().to_owned();

    let logs = String::from_utf8_lossy(&crate::support::logs().lock().unwrap()).into_owned();
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle) && l.contains("request"))
            .unwrap_or_else(|| panic!("no request line with {needle}"))
            .to_owned()
    };
    let refusal = line("edge-7f3a.1");
    assert!(refusal.contains("status=401"), "{refusal}");
    assert!(
        refusal.contains("error_code=\"unauthorized\"")
            || refusal.contains("error_code=unauthorized"),
        "{refusal}"
    );
    assert!(!refusal.contains("not_a_real_key"), "{refusal}");
    let ok = line(&id);
    assert!(ok.contains("workspace=") && ok.contains(&workspace), "{ok}");
    assert!(!ok.contains("error_code"), "{ok}");
    let ms = ok
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .unwrap();
    assert!(
        ms.split_once('.')
            .is_none_or(|(_, tenths)| tenths.len() == 1),
        "timing to 0.1 ms: {ms}"
    );
}

/// Every stream the AsyncAPI description names is routed (a request to it is answered by its
/// handler, not by the unknown-path fallback).
#[tokio::test]
async fn every_stream_path_is_routed() {
    let ts = TestServer::start().await;
    for path in callstream_server::STREAM_PATHS {
        let concrete = path
            .replace("{id}", "call_unknown")
            .replace("{call_sid}", "CA0123456789abcdef0123456789abcdef");
        let r = ts.http.get(ts.url(&concrete)).send().await.unwrap();
        let body = r.text().await.unwrap_or_default();
        assert!(
            !body.contains("no such endpoint"),
            "{path} is not routed: {body}"
        );
    }
}

/// With `internal_listen`, health and metrics are served there and not on the public listener;
/// the families' series come in one order, scrape after scrape.
#[tokio::test]
async fn health_and_metrics_can_move_to_an_internal_listener() {
    let ts = TestServer::start_with(|c| {
        c.internal_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let internal = ts.server().internal_addr().expect("an internal listener");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let public = ts.http.get(ts.url(path)).send().await.unwrap();
        assert_eq!(public.status(), 404, "{path} is not public");
        let inside = ts
            .http
            .get(format!("http://{internal}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(inside.status(), 200, "{path} inside");
    }
    // The public API is unchanged.
    let (status, _) = ts.get("/v1/calls", &ts.acme.api).await;
    assert_eq!(status, 200);
    let text = ts
        .http
        .get(format!("http://{internal}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Within each family, series ordered by their labels.
    let mut block: Vec<String> = Vec::new();
    let mut families = 0;
    for line in text.lines().chain(std::iter::once("# end")) {
        if line.starts_with('#') {
            let labels: Vec<String> = block
                .iter()
                .filter(|l| !l.contains("le=\""))
                .map(|l| {
                    l.split_once('{')
                        .and_then(|(_, r)| r.split_once('}'))
                        .map_or("", |(labels, _)| labels)
                        .to_owned()
                })
                .collect();
            let mut sorted = labels.clone();
            sorted.sort();
            assert_eq!(labels, sorted, "series of one family in label order");
            families += usize::from(block.len() > 1);
            block.clear();
        } else {
            block.push(line.to_owned());
        }
    }
    assert!(families > 0, "some family has several series:\n{text}");
}
