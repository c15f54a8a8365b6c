//! Request and response bodies: strict JSON decoding that names the offending field (via
//! `serde_path_to_error`), JSON responses, and the streaming body used by watch.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use netd_config::strict::StrictError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::error::ApiError;

/// Response body type of every route.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Reads and decodes a JSON request body. Errors are 400s naming the field (`ports[0].port`,
/// or the unknown or missing field's path), or 413 for bodies over [`MAX_BODY`].
pub async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {e}"),
                )
            }
        })?
        .to_bytes();
    decode_json(&bytes)
}

/// Decodes a JSON document strictly (see [`read_json`]).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body is empty: send a JSON object",
        ));
    }
    // serde would also accept a struct as an array of its fields: refuse anything but objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Unknown fields are refused here, at any depth, rather than by the types themselves: the
    // same types are read from the store and by sidecars, which must tolerate a newer
    // daemon's fields (see `netd_config::netd`).
    let value = match netd_config::strict::from_deserializer(&mut de) {
        Ok(v) => v,
        Err(StrictError::Unknown { path, name }) => {
            return Err(ApiError::bad_field(path, format!("unknown field `{name}`")))
        }
        Err(StrictError::Invalid(e)) => return Err(path_error(e)),
    };
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON after the object: {e}"),
        )
    })?;
    Ok(value)
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {inner}"));
    }
    let text = inner.to_string();
    // serde_json appends " at line L column C"; the field path says more.
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match (named, path.as_str()) {
        (Some(name), "." | "") => name.to_string(),
        (Some(name), p) if !p.ends_with(name) => format!("{p}.{name}"),
        (_, "." | "") => return ApiError::new(StatusCode::BAD_REQUEST, message),
        (_, p) => p.to_string(),
    };
    ApiError::bad_field(field, message)
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    with_type(status, full(bytes), "application/json")
}

/// The response of an error.
pub fn error(e: &ApiError) -> Response<Body> {
    json(e.status, &e.body())
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A response with a body and content type.
pub fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A body streamed from a channel: ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// The body and the sender that feeds it.
    pub fn new(buffer: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(buffer);
        (tx, Self { rx })
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_config::netd::{LeaseGrant, ServiceSpec};

    fn err<T: DeserializeOwned + std::fmt::Debug>(s: &str) -> ApiError {
        decode_json::<T>(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err::<ServiceSpec>(r#"{"name":"a","ports":[{"port":70000}]}"#);
        assert_eq!(e.field.as_deref(), Some("ports[0].port"), "{e:?}");
        assert!(e.message.contains("70000"), "{e:?}");
        let e = err::<ServiceSpec>(r#"{"name":"a","ports":[{"port":80,"bogus":1}]}"#);
        assert_eq!(e.field.as_deref(), Some("ports[0].bogus"), "{e:?}");
        let e = err::<ServiceSpec>(r#"{"name":"a","ports":[{"protocol":"tcp"}]}"#);
        assert_eq!(e.field.as_deref(), Some("ports[0].port"), "{e:?}");
        let e = err::<ServiceSpec>(r#"{"ports":[]}"#);
        assert_eq!(e.field.as_deref(), Some("name"), "{e:?}");
        let e = err::<ServiceSpec>(r#"{"name":7,"ports":[]}"#);
        assert_eq!(e.field.as_deref(), Some("name"), "{e:?}");
        let e = err::<LeaseGrant>(r#"{"ttl_seconds":"x"}"#);
        assert_eq!(e.field.as_deref(), Some("ttl_seconds"), "{e:?}");
        let e = err::<LeaseGrant>(r#"{"ttl_seconds":5"#);
        assert_eq!(e.field, None);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = err::<LeaseGrant>(r#"[1]"#);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(err::<LeaseGrant>("").message.contains("empty"));
    }

    #[test]
    fn unknown_fields_are_refused_at_any_depth_though_the_types_tolerate_them() {
        for (body, field) in [
            (r#"{"name":"a","ports":[],"bogus":1}"#, "bogus"),
            (
                r#"{"name":"a","ports":[{"port":80},{"port":81,"prot":"tcp"}]}"#,
                "ports[1].prot",
            ),
            (
                r#"{"name":"a","ports":[],"health_check":{"kind":"tcp","intervall_ms":5}}"#,
                "health_check.intervall_ms",
            ),
        ] {
            let e = err::<ServiceSpec>(body);
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {e:?}");
            let name = field.rsplit('.').next().unwrap();
            assert!(
                e.message.contains(&format!("unknown field `{name}`")),
                "{e:?}"
            );
        }
        // The types themselves read a newer daemon's fields (stores, sidecars).
        let newer: ServiceSpec = serde_json::from_str(
            r#"{"name":"a","ports":[{"port":80,"weight_hint":3}],"routes_v2":[]}"#,
        )
        .unwrap();
        assert_eq!(newer.ports[0].port, 80);
        // The typo wins over the missing field it causes.
        let e = err::<LeaseGrant>(r#"{"ttl":5}"#);
        assert_eq!(e.field.as_deref(), Some("ttl"), "{e:?}");
        // And a clean body still decodes.
        let ok: ServiceSpec = decode_json(br#"{"name":"a","ports":[{"port":80}]}"#).unwrap();
        assert_eq!(ok.name, "a");
    }
}
