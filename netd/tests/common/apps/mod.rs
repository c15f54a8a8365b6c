//! Unmodified applications for the mesh end-to-end tests, beyond the HTTP/1.1 ones of
//! `netd::mesh::probe`: HTTP servers and clients over hyper ([`http`]; HTTP/1.1 with
//! request bodies and upgrades, h2c), gRPC framed by hand over hyper's HTTP/2 ([`grpc`]:
//! length-prefixed messages, `grpc-status` trailers, bidirectional streams), TLS with
//! rustls and self-signed certificates from rcgen ([`tls`]), and opaque TCP ([`tcp`]: a
//! binary echo that answers a half-close, a server-first greeter). Servers run on the
//! caller's tokio runtime on listeners bound inside a container's namespace; each answers
//! with its replica's name, so a test can tell who served. Everything the clients do is
//! bounded by [`IO_TIMEOUT`].

pub mod grpc;
pub mod http;
pub mod tcp;
pub mod tls;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for any exchange of the clients here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client-side failure, as text for the test's message.
pub type Failed = String;

/// `f` bounded by [`IO_TIMEOUT`].
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {IO_TIMEOUT:?}")),
    }
}

/// A listener bound (by the caller, inside a namespace) as a std socket, for tokio; call in
/// the runtime's context.
pub fn tokio_listener(l: std::net::TcpListener) -> TcpListener {
    l.set_nonblocking(true).expect("non-blocking listener");
    TcpListener::from_std(l).expect("tokio listener")
}

/// A connection opened (by the caller, inside a namespace) as a std socket, for tokio; call in
/// the runtime's context.
pub fn tokio_stream(s: std::net::TcpStream) -> TcpStream {
    s.set_nonblocking(true).expect("non-blocking stream");
    TcpStream::from_std(s).expect("tokio stream")
}

/// Accepts on `listener` forever (until the runtime goes), serving each connection with
/// `serve` on its own task.
pub(crate) fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve(s));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
}

/// Every body here, requests' and responses'.
pub type AppBody = UnsyncBoxBody<Bytes, Infallible>;

/// A body fed by a task through a channel (data, then maybe trailers); the task sees the
/// body dropped (its stream reset) when its next send fails, and ends the body by dropping
/// its sender.
pub struct Piped(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl Piped {
    /// A body, and where to send its frames.
    pub fn new() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Piped) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (tx, Piped(rx))
    }
}

impl hyper::body::Body for Piped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// An empty request body.
pub fn no_body() -> AppBody {
    Full::default().boxed_unsync()
}

/// A body's bytes (none if it fails).
async fn body_bytes(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}
