//! The HTTP/1 path for SSE streams: a stream's request is read and its response written here,
//! not by hyper, so an open stream holds no HTTP buffers at all.
//!
//! Why: hyper keeps, for every connection's life, a read buffer of at least 8 KiB (its minimum
//! `max_buf_size`) and a buffer for response heads. Measured with `callstream-bench` (scenario
//! idle, 15,000 SSE streams, docs/benchmarks.md), an idle stream cost 14.5 KB of server memory
//! behind hyper; the goal is 4 KiB. An SSE stream needs none of what those buffers are
//! for: its request is one GET with no body, and its response is a head and then frames.
//!
//! So every connection's first request head is read here, into a buffer that is freed once the
//! head is parsed. A `GET` to an SSE stream path ([`crate::is_sse_stream`]) with no body, no
//! upgrade and nothing pipelined behind it is answered here: the request goes through the same
//! router (auth, CORS, logging: everything the handlers do is unchanged), and the response is
//! written straight to the socket, chunked, with `connection: close`. What an open stream then
//! keeps is its socket, its body and a few words ([`Streaming`]). Anything else (REST,
//! WebSocket upgrades, malformed or oversized heads) goes to hyper with the bytes already read
//! put back in front of the socket, exactly as if hyper had read them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

/// The longest request head read here; a longer one goes to hyper, which refuses it.
const MAX_HEAD: usize = 8 * 1024;
/// Most header fields parsed here; more go to hyper.
const MAX_HEADERS: usize = 64;

/// What the first request on a connection is.
pub enum First {
    /// An SSE stream request, to be answered here.
    Stream(Box<Request<Body>>),
    /// Anything else: hyper serves the connection, reading these bytes first.
    Other(Bytes),
    /// The client left, sent nothing in time, or broke the connection.
    Gone,
    /// A head that cannot be served: answered with its JSON refusal, then the connection closes.
    Refused(Refusal),
}

/// A refusal of a request head, answered before any router runs, in the API's JSON shape
/// (hyper's own answers to the same heads have empty bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub error_code: &'static str,
    pub message: &'static str,
}

impl Refusal {
    /// The whole HTTP/1.1 answer, `Connection: close`.
    pub fn to_bytes(self) -> Vec<u8> {
        let body = serde_json::json!({ "error_code": self.error_code, "message": self.message })
            .to_string();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status,
            self.reason,
            body.len()
        )
        .into_bytes()
    }
}

const MALFORMED: Refusal = Refusal {
    status: 400,
    reason: "Bad Request",
    error_code: "invalid_request",
    message: "the request head is not valid HTTP/1.1",
};

const HEAD_TOO_LARGE: Refusal = Refusal {
    status: 431,
    reason: "Request Header Fields Too Large",
    error_code: "headers_too_large",
    message: "the request head is over 8 KiB",
};

const URI_TOO_LONG: Refusal = Refusal {
    status: 414,
    reason: "URI Too Long",
    error_code: "uri_too_long",
    message: "the request target is too long",
};

/// Reads the first request head (within `timeout`) and decides who answers it.
pub async fn read_first<S: AsyncRead + Unpin>(io: &mut S, timeout: Duration) -> First {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Gone,
            Ok(Ok(_)) => {}
        }
        match classify(&buf) {
            Head::Stream(request) => return First::Stream(request),
            Head::Other => return First::Other(buf.freeze()),
            Head::Refused(refusal) => return First::Refused(refusal),
            Head::Partial => {}
        }
    }
}

/// What the bytes read so far make of the first request.
pub enum Head {
    /// A complete SSE stream request, to be answered here.
    Stream(Box<Request<Body>>),
    /// Anything else, complete or not: hyper reads it again and answers (or refuses) it.
    Other,
    /// Incomplete, and short enough to wait for more.
    Partial,
    /// Malformed, or a head too large for the server: refused here, in JSON.
    Refused(Refusal),
}

/// Classifies the bytes a client sent first. Reads network input: fuzzed (`fuzz/`).
pub fn classify(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match stream_request(&parsed, len == buf.len()) {
            Some(request) => Head::Stream(Box::new(request)),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Partial,
        // hyper reads at most `MAX_HEAD` of a head too (`http::READ_BUFFER`), and would answer
        // this with an empty 431.
        Ok(httparse::Status::Partial) => Head::Refused(HEAD_TOO_LARGE),
        // More fields than counted here: hyper allows more, and decides.
        Err(httparse::Error::TooManyHeaders) => Head::Other,
        // hyper parses with httparse too, and would answer this with an empty 400.
        Err(_) => Head::Refused(MALFORMED),
    }
}

/// The request, when it is one this path answers.
fn stream_request(
    parsed: &httparse::Request<'_, '_>,
    nothing_behind: bool,
) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || !nothing_behind {
        return None;
    }
    // The path checked is the parsed URI's, the one the router will see: splitting the raw
    // target at `?` let `/v1/calls/#x/transcript/stream` through as a stream request whose
    // URI path is `/v1/calls/` (found by the fuzz target `stream_head`).
    let uri = Uri::try_from(parsed.path?).ok()?;
    if !crate::is_sse_stream(uri.path()) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH && field.value != b"0" {
            return None;
        }
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    *request.headers_mut() = headers;
    Some(request)
}

/// Answers a stream request through `router` and writes the response head. Returns the body
/// still to stream, or `None` when the client is gone.
pub async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    router: Router,
    request: Box<Request<Body>>,
) -> Option<Streaming> {
    let chunked = request.version() == Version::HTTP_11;
    let Ok(response) = router.oneshot(*request).await;
    let (parts, body) = response.into_parts();
    // A body of known size (an error, a 204) goes with its length; a stream goes chunked, or
    // for HTTP/1.0 until the close.
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    let length = if has_length {
        None
    } else {
        HttpBody::size_hint(&body).exact()
    };
    let no_body = matches!(parts.status.as_u16(), 204 | 304);
    let framing = if has_length || length.is_some() || no_body {
        Framing::Length
    } else if chunked {
        Framing::Chunked
    } else {
        Framing::Close
    };
    let head = response_head(&parts, length, framing);
    io.write_all(&head).await.ok()?;
    Some(Streaming { body, framing })
}

/// A response body being written: all an open stream keeps besides its socket.
pub struct Streaming {
    body: Body,
    framing: Framing,
}

impl Streaming {
    /// Writes the body until it ends, the client leaves, or a write fails (the socket's stall
    /// guard fails a write that makes no progress); then closes.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, io: &mut S) {
        loop {
            // Frames first: a stream that is being written to need not poll its socket's read
            // side for every frame (a leaving client is still noticed as soon as it idles).
            let frame = tokio::select! {
                biased;
                frame = self.body.frame() => frame,
                () = client_gone(io) => return,
            };
            let data = match frame {
                None => break,
                Some(Err(_)) => return,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            let written = match self.framing {
                Framing::Chunked => write_chunk(io, &data).await,
                Framing::Length | Framing::Close => io.write_all(&data).await,
            };
            if written.is_err() {
                return;
            }
        }
        if self.framing == Framing::Chunked && io.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
        let _ = io.shutdown().await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `content-length` (or a status without a body).
    Length,
    /// `transfer-encoding: chunked` (HTTP/1.1).
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0).
    Close,
}

fn response_head(
    parts: &axum::http::response::Parts,
    length: Option<u64>,
    framed: Framing,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\ndate: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    if framed == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// The largest chunk sent with one contiguous `send`; a larger one goes as a vectored write.
/// Nearly every single event's frame fits (a transcript frame is ~120 bytes); coalesced
/// frames and long texts take the vectored path.
const SMALL_CHUNK: usize = 1024;

/// One chunk. A small one (nearly every frame) is laid out on the stack and sent in one
/// `send`: on loopback at 100,000 frames/s, `writev`'s own path (`vfs_writev`, `fdget_pos`,
/// importing the three-entry iovec) cost 0.06 of a core against 0.03 for `send`'s (`perf
/// record`, docs/benchmarks.md), and a copy of ~120 bytes is far cheaper than the difference.
/// The buffer lives only inside one poll, so a stream waiting on a full socket keeps none.
async fn write_chunk<S: AsyncWrite + Unpin>(io: &mut S, data: &[u8]) -> io::Result<()> {
    let mut size = [0u8; 18];
    let size_len = chunk_size_line(data.len(), &mut size);
    let size = &size[..size_len];
    let total = size_len + data.len() + 2;
    if total <= SMALL_CHUNK {
        let mut sent = 0;
        while sent < total {
            let n = std::future::poll_fn(|cx| {
                let mut chunk = [0u8; SMALL_CHUNK];
                let (head, rest) = chunk.split_at_mut(size_len);
                head.copy_from_slice(size);
                rest[..data.len()].copy_from_slice(data);
                rest[data.len()..data.len() + 2].copy_from_slice(b"\r\n");
                Pin::new(&mut *io).poll_write(cx, &chunk[sent..total])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        return Ok(());
    }
    let mut parts: [&[u8]; 3] = [size, data, b"\r\n"];
    while parts.iter().any(|p| !p.is_empty()) {
        let slices = parts.map(IoSlice::new);
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        for part in &mut parts {
            let take = left.min(part.len());
            *part = &part[take..];
            left -= take;
        }
    }
    Ok(())
}

/// Writes `len` in hex and CRLF (a chunk's size line) into `out`; returns the bytes written.
/// By hand rather than with `write!`: the formatting machinery was a tenth of this module's
/// instructions per frame under callgrind.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[(len >> shift) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Resolves when the client closes its side or the connection breaks. Whatever it sends is
/// read and dropped (a stream takes no input), into a few bytes that live only while waiting.
async fn client_gone<S: AsyncRead + Unpin>(io: &mut S) {
    let mut sink = [0u8; 16];
    loop {
        match io.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A socket with bytes already read from it put back in front: hyper reads them first.
///
/// On the way out it also puts the API's JSON in place of the answers hyper writes itself, with
/// empty bodies, to a later request head on a kept-alive connection that it cannot parse (400,
/// 414, 431): every error a client gets is `{"error_code","message"}`, whichever request of a
/// connection it was (the first one's head is refused by [`classify`] before hyper runs).
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
    /// A refusal in place of hyper's own, still to be written, before anything else.
    replacement: Bytes,
    /// The connection was upgraded (`101`): its bytes are another protocol's from then on.
    upgraded: bool,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self {
            prefix,
            inner,
            replacement: Bytes::new(),
            upgraded: false,
        }
    }

    /// Whether `out`, the start of a write, is an answer hyper wrote itself to a head it could
    /// not parse; then the refusal to write instead. The API's own answers all carry a JSON body
    /// with its `content-type`; hyper's have none and `content-length: 0`.
    fn own_refusal(&mut self, out: &[u8]) -> Option<Refusal> {
        if self.upgraded || !out.starts_with(b"HTTP/1.1 ") {
            return None;
        }
        let refusal = match out.get(9..13) {
            Some(b"101 ") => {
                self.upgraded = true;
                return None;
            }
            Some(b"400 ") => MALFORMED,
            Some(b"414 ") => URI_TOO_LONG,
            Some(b"431 ") => HEAD_TOO_LARGE,
            _ => return None,
        };
        let end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = &out[..end];
        let has = |needle: &[u8]| {
            head.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        (end == out.len() && has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\ncontent-type:"))
            .then_some(refusal)
    }
}

impl<S: AsyncWrite + Unpin> Rewind<S> {
    /// Writes what is left of a replacement; ready once it is all written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.replacement.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.replacement))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.replacement.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Give the memory back at once: the connection may live for hours.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(refusal) = self.own_refusal(buf) {
            self.replacement = Bytes::from(refusal.to_bytes());
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        // hyper's own answer has no body: it is the only slice with bytes.
        let written: Vec<&IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).collect();
        if let [only] = written.as_slice()
            && let Some(refusal) = self.own_refusal(only)
        {
            self.replacement = Bytes::from(refusal.to_bytes());
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most 7 bytes per write and is full (`Pending`) every other time.
    #[derive(Default)]
    struct Trickle {
        out: Vec<u8>,
        full: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.full = !self.full;
            if self.full {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(7);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunks_survive_short_writes_and_a_full_socket_small_and_large() {
        for len in [1, 120, SMALL_CHUNK - 5, SMALL_CHUNK - 4, SMALL_CHUNK, 5000] {
            let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut socket = Trickle::default();
            write_chunk(&mut socket, &data).await.unwrap();
            let mut expect = format!("{len:x}\r\n").into_bytes();
            expect.extend_from_slice(&data);
            expect.extend_from_slice(b"\r\n");
            assert_eq!(socket.out, expect, "{len}");
        }
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex_and_crlf() {
        for len in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            32 * 1024,
            1 << 40,
            usize::MAX,
        ] {
            let mut out = [0u8; 18];
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }
}
