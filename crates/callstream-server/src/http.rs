//! The accept loop: every connection is served by hyper's HTTP/1 server directly, rather than
//! through `axum::serve`, so that its buffers can be sized.
//!
//! Why: an idle stream's memory is mostly per-connection buffers. Measured with valgrind massif
//! and `callstream-bench` (scenario idle, docs/benchmarks.md), hyper's read buffer grew to
//! 16 KiB per connection under `axum::serve`, which offers no setting for it. Here it is bounded
//! at 8 KiB, hyper's minimum. HTTP/2 is not offered (the gateway's clients are browsers'
//! EventSource and WebSocket, and servers' HTTP/1.1 clients).

use std::pin::pin;
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

use crate::conn::GuardedListener;

/// hyper's read buffer limit per connection (its smallest allowed value).
const READ_BUFFER: usize = 8 * 1024;
/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts and serves connections until `shutdown`; then asks each open connection to finish
/// gracefully and waits for them (the caller bounds that wait).
pub async fn serve(
    mut listener: GuardedListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(READ_BUFFER)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = TaskTracker::new();
    loop {
        let (io, _addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|req: Request<Incoming>| req.map(Body::new)),
        );
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
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
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
