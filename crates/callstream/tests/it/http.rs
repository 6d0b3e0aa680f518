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

    // Binary garbage.
    let mut tcp = connect(&ts).await;
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, b'\r', b'\n', b'\r', b'\n'])
        .await
        .unwrap();
    let reply = read_to_close(&mut tcp).await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply:.80}"
    );

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
