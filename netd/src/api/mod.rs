//! The HTTP/1.1 + JSON API on the daemon's unix socket (hyper).
//!
//! One task per connection; each request runs in its own task, so a client that hangs up can
//! never cancel a write half-way. Every connection's peer credentials are checked first
//! ([`peer`]); refused peers get 403 on every request. Draining (shutdown): stop accepting, let
//! every connection finish its in-flight request (keep-alive connections close after it, watch
//! streams end), bounded by a timeout.
//!
//! Submodules: [`routes`] (the route table and handlers), [`watch`] (the watch stream),
//! [`body`] (strict JSON decoding, responses), [`error`] (error → status mapping), [`peer`]
//! (who may connect).

pub mod body;
pub mod error;
pub mod peer;
pub mod routes;
pub mod watch;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch as signal};

use self::error::ApiError;
use self::peer::Access;
use crate::networks::Networks;
use crate::registry::Registry;

/// Everything the handlers need.
pub struct ApiState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Network operations (with conflists).
    pub networks: Networks,
    /// Socket path, for status.
    pub socket: PathBuf,
    /// Daemon start time.
    pub started: Instant,
    /// Turns true when the daemon drains; long-lived streams end on it.
    pub drain: signal::Receiver<bool>,
    /// Who may connect.
    pub access: Access,
    /// DNS server state, for status.
    pub dns: crate::dns::DnsHandle,
    /// The sidecar supervisor (`None` with `--no-mesh`).
    pub mesh: Option<crate::mesh::MeshHandle>,
}

/// Serves connections from `listener` until `drain` turns true, then waits up to
/// `drain_timeout` for open connections to finish. Returns the number of connections still
/// open when it gave up.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>, drain_timeout: Duration) -> usize {
    let mut drain = state.drain.clone();
    // Each connection holds a sender; recv() returns None once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let open = Arc::new(());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let state = state.clone();
                    let done = open_tx.clone();
                    let count = open.clone();
                    tokio::spawn(async move {
                        connection(stream, state).await;
                        drop((done, count));
                    });
                }
                Err(e) => {
                    crate::log(&format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = drained(&mut drain) => break,
        }
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(drain_timeout, open_rx.recv())
        .await
        .is_err()
    {
        return Arc::strong_count(&open).saturating_sub(1);
    }
    0
}

/// Resolves once the daemon starts draining (at once if it already has).
pub async fn drained(drain: &mut signal::Receiver<bool>) {
    // The guard wait_for returns is dropped here, so callers' futures stay Send. An error
    // means the sender is gone: the daemon is going away, which counts as draining.
    let _ = drain.wait_for(|d| *d).await;
}

async fn connection(stream: UnixStream, state: Arc<ApiState>) {
    let verdict = match stream.peer_cred() {
        Ok(cred) => state.access.check(&cred),
        Err(e) => Err(format!("cannot read the peer's credentials: {e}")),
    };
    let verdict = Arc::new(verdict);
    let svc_state = state.clone();
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = svc_state.clone();
        let verdict = verdict.clone();
        async move {
            if let Err(why) = &*verdict {
                let e = ApiError::new(StatusCode::FORBIDDEN, why.clone());
                return Ok::<_, Infallible>(body::error(&e));
            }
            // A task of its own: dropping the connection does not cancel the request.
            let resp = tokio::spawn(routes::handle(state, req))
                .await
                .unwrap_or_else(|e| {
                    body::error(&ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("request handler failed: {e}"),
                    ))
                });
            Ok(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut drain = state.drain.clone();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = drained(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
