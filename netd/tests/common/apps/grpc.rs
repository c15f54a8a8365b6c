//! gRPC framed by hand over hyper's HTTP/2: the server side of [`super::http::serve_h2`]'s
//! gRPC methods (unary, and bidirectional on [`CHAT_PATH`]) and their clients.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};

use super::http::H2Send;
use super::{body_bytes, bounded, AppBody, Failed, Piped, IO_TIMEOUT};

/// The gRPC message that makes [`super::http::serve_h2`] fail the call with `NOT_FOUND` in
/// its trailers.
pub const GRPC_FAIL: &[u8] = b"please fail";
/// The path of [`super::http::serve_h2`]'s bidirectional gRPC method.
pub const CHAT_PATH: &str = "/netd.test.Echo/Chat";

/// The answer of [`super::http::serve_h2`] to a gRPC request: one message
/// `<name>:<its message>` and trailers `grpc-status: 0`, `grpc-message` and `x-replica:
/// <name>` (status 5 for [`GRPC_FAIL`]), or on [`CHAT_PATH`] one such message per message,
/// as they come (see [`chat`]).
pub(super) async fn answer(req: Request<Incoming>, name: Arc<str>) -> Response<AppBody> {
    if req.uri().path() == CHAT_PATH {
        return grpc_response(chat(req.into_body(), name).boxed_unsync());
    }
    let msg = grpc_unframe(body_bytes(req.into_body()).await).unwrap_or_default();
    let (status, message) = if msg == GRPC_FAIL {
        ("5", "no such thing")
    } else {
        ("0", "ok")
    };
    let mut reply = format!("{name}:").into_bytes();
    reply.extend_from_slice(&msg);
    let trailers = grpc_trailers(status, message, &name);
    let body = Full::new(grpc_frame(&reply))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    grpc_response(body)
}

/// Splits the whole gRPC messages off the front of `buf`.
fn take_messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let mut m = buf.split_to(5 + len);
        m.advance(5);
        out.push(m.freeze());
    }
    out
}

/// A bidirectional gRPC stream: each message is answered with `<name>:<message>` as soon
/// as it has arrived, while the request goes on; its end is answered with the trailers.
fn chat(body: Incoming, name: Arc<str>) -> Piped {
    let (tx, piped) = Piped::new();
    tokio::spawn(async move {
        let mut body = body;
        let mut buf = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            for m in take_messages(&mut buf) {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&m);
                if tx.send(Frame::data(grpc_frame(&reply))).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx
            .send(Frame::trailers(grpc_trailers("0", "ok", &name)))
            .await;
    });
    piped
}

fn grpc_trailers(status: &'static str, message: &'static str, name: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    if let Ok(v) = HeaderValue::from_str(name) {
        trailers.insert("x-replica", v);
    }
    trailers
}

fn grpc_response(body: AppBody) -> Response<AppBody> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// One gRPC message on the wire: not compressed, 4-byte big-endian length, the bytes.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).expect("small message"));
    b.put_slice(msg);
    b.freeze()
}

/// The one message of a gRPC body, `None` unless the body is exactly one whole message.
pub fn grpc_unframe(mut body: Bytes) -> Option<Vec<u8>> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = body.get_u32() as usize;
    (body.len() == len).then(|| body.to_vec())
}

/// What a unary gRPC call got back.
#[derive(Debug)]
pub struct GrpcReply {
    /// The response's `content-type`.
    pub content_type: Option<String>,
    /// The one message of the response.
    pub message: Vec<u8>,
    /// The trailers (`None` when none arrived).
    pub trailers: Option<HeaderMap>,
}

impl GrpcReply {
    /// Trailer `name` as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

/// A unary gRPC call `POST uri` with one message `msg` on the HTTP/2 connection `send`.
pub async fn grpc_call(mut send: H2Send, uri: String, msg: Vec<u8>) -> Result<GrpcReply, Failed> {
    let req = Request::post(&uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&msg)).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let resp = bounded("gRPC request", send.send_request(req)).await?;
    if resp.status() != 200 {
        return Err(format!("gRPC HTTP status {}", resp.status()));
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = bounded("gRPC body", resp.into_body().collect()).await?;
    let trailers = collected.trailers().cloned();
    let message = grpc_unframe(collected.to_bytes()).ok_or("not one gRPC message")?;
    Ok(GrpcReply {
        content_type,
        message,
        trailers,
    })
}

/// A bidirectional gRPC call on `send`: `messages` sent one at a time, each only once the
/// answer to the one before has come back (so the answers must flow while the request is
/// still open), then the request ended. The answers, and the trailers.
pub async fn grpc_chat(
    mut send: H2Send,
    uri: String,
    messages: &[&str],
) -> Result<(Vec<String>, HeaderMap), Failed> {
    let (tx, body) = Piped::new();
    let req = Request::post(&uri)
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body.boxed_unsync())
        .map_err(|e| e.to_string())?;
    // The first message goes out with the request: a server (or a proxy) may wait for some
    // body before it answers the head.
    let mut pending = messages.iter();
    let first = pending.next().ok_or("no message")?;
    let _ = tx.send(Frame::data(grpc_frame(first.as_bytes()))).await;
    let resp = bounded("gRPC stream", send.send_request(req)).await?;
    if resp.status() != 200 {
        return Err(format!("gRPC HTTP status {}", resp.status()));
    }
    // The request stays open while `tx` lives.
    let mut tx = Some(tx);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IO_TIMEOUT, body.frame()).await {
            Err(_) => return Err(format!("no answer within {IO_TIMEOUT:?} after {answers:?}")),
            Ok(None) => return Err(format!("no trailers after {answers:?}")),
            Ok(Some(Err(e))) => return Err(format!("gRPC stream after {answers:?}: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => match frame.into_trailers() {
                Ok(t) => return Ok((answers, t)),
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        for m in take_messages(&mut buf) {
            answers.push(String::from_utf8_lossy(&m).into_owned());
            // Answered: the next message, or the end of the request.
            match (pending.next(), &tx) {
                (Some(next), Some(t)) => {
                    let _ = t.send(Frame::data(grpc_frame(next.as_bytes()))).await;
                }
                _ => tx = None,
            }
        }
    }
}
