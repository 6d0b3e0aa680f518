//! The accept loop. A connection whose first request is an SSE stream is answered by
//! [`crate::stream_http`], which keeps no HTTP buffers while the stream is open; every other
//! connection is served by hyper's HTTP/1 server directly, rather than through `axum::serve`,
//! so that its buffers can be sized.
//!
//! Why: an idle stream's memory is mostly per-connection buffers. Measured with valgrind massif
//! and `callstream-bench` (scenario idle, docs/benchmarks.md), hyper's read buffer grew to
//! 16 KiB per connection under `axum::serve`, which offers no setting for it. Here it is bounded
//! at 8 KiB, hyper's minimum. HTTP/2 is not offered (the gateway's clients are browsers'
//! EventSource and WebSocket, and servers' HTTP/1.1 clients).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use tokio::net::TcpStream;

use crate::conn::{GuardedListener, StallGuard};
use crate::stream_http::{self, First, Rewind};

/// hyper's read buffer limit per connection (its smallest allowed value).
const READ_BUFFER: usize = 8 * 1024;

/// Accepts and serves connections until `shutdown`; then asks each open connection to finish
/// gracefully and waits for them (the caller bounds that wait). A client has `head_timeout` to
/// send each request's head (`header_read_timeout_secs`).
pub async fn serve(
    mut listener: GuardedListener,
    router: Router,
    shutdown: CancellationToken,
    head_timeout: Duration,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (io, _addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let router = router.clone();
        let stop = shutdown.clone();
        // This task lives as long as the connection, so its size is memory every open stream
        // pays: the phases that need much (reading the head, the handler, hyper) are boxed and
        // freed when done, and only the stream loop is kept inline.
        connections.spawn(async move {
            let mut io = io;
            let first = Box::pin(async {
                tokio::select! {
                    () = stop.cancelled() => Opening::Done,
                    first = stream_http::read_first(&mut io, head_timeout) => match first {
                        First::Gone => Opening::Done,
                        First::Refused(refusal) => {
                            use tokio::io::AsyncWriteExt;
                            let _ = io.write_all(&refusal.to_bytes()).await;
                            let _ = io.shutdown().await;
                            Opening::Done
                        }
                        First::Other(prefix) => Opening::Hyper(prefix),
                        First::Stream(request) => {
                            match stream_http::respond(&mut io, router.clone(), request).await {
                                Some(stream) => Opening::Stream(stream),
                                None => Opening::Done,
                            }
                        }
                    },
                }
            })
            .await;
            match first {
                Opening::Done => {}
                Opening::Stream(stream) => stream.run(&mut io).await,
                Opening::Hyper(prefix) => {
                    Box::pin(serve_hyper(
                        Rewind::new(prefix, io),
                        router,
                        stop,
                        head_timeout,
                    ))
                    .await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// How a connection goes on after its first request head.
enum Opening {
    Done,
    Stream(stream_http::Streaming),
    Hyper(bytes::Bytes),
}

/// Serves a connection with hyper's HTTP/1 server, until it ends or the server shuts down.
async fn serve_hyper(
    io: Rewind<StallGuard<TcpStream>>,
    router: Router,
    stop: CancellationToken,
    head_timeout: Duration,
) {
    let service =
        TowerToHyperService::new(router.map_request(|req: Request<Incoming>| req.map(Body::new)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(READ_BUFFER)
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
