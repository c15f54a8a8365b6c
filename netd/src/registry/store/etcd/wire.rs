//! The JSON shapes of etcd 3.4's v3 gRPC gateway (`/v3/...`), and the base64 its byte fields
//! use.
//!
//! The gateway writes protobuf messages as JSON with the proto field names, 64-bit integers as
//! strings and default values (0, false, empty) left out; it accepts integers as strings or
//! numbers. Only the fields netd uses are declared; unknown ones are ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `int64`/`uint64` fields: written as strings, read from strings or numbers.
mod int {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            Str(String),
            Num(i64),
        }
        match Int::deserialize(d)? {
            Int::Str(s) => s.parse::<i64>().map_err(serde::de::Error::custom),
            Int::Num(n) => Ok(n),
        }
        .map(|n| u64::try_from(n).unwrap_or(0))
    }
}

/// `bytes` fields: base64 strings.
mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode(&s).ok_or_else(|| serde::de::Error::custom("invalid base64"))
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Every response's header.
#[derive(Debug, Default, Deserialize)]
pub struct Header {
    /// The store's revision when the request was served.
    #[serde(default, with = "int")]
    pub revision: u64,
}

/// A stored key.
#[derive(Debug, Default, Deserialize)]
pub struct KeyValue {
    /// Key.
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    /// Revision of the last change (for a delete event: of the delete).
    #[serde(default, with = "int")]
    pub mod_revision: u64,
}

/// `/v3/kv/range`.
#[derive(Debug, Serialize)]
pub struct RangeRequest {
    /// First key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// End of the range (exclusive); empty for one key.
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// At most this many keys (0: all).
    #[serde(with = "int", skip_serializing_if = "is_zero")]
    pub limit: u64,
    /// Read at this revision (0: the latest).
    #[serde(with = "int", skip_serializing_if = "is_zero")]
    pub revision: u64,
}

/// Answer of `/v3/kv/range`.
#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// The keys.
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// More keys follow (the limit cut the answer).
    #[serde(default)]
    pub more: bool,
}

/// A `Compare` of a transaction (only `MOD < value` is used).
#[derive(Debug, Serialize)]
pub struct Compare {
    /// `MOD`.
    pub target: &'static str,
    /// `LESS`.
    pub result: &'static str,
    /// Key compared.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// Compared value.
    #[serde(with = "int")]
    pub mod_revision: u64,
}

/// `PutRequest`.
#[derive(Debug, Serialize)]
pub struct PutRequest {
    /// Key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// Lease to attach to (0: none).
    #[serde(with = "int", skip_serializing_if = "is_zero")]
    pub lease: u64,
}

/// `DeleteRangeRequest` of one key.
#[derive(Debug, Serialize)]
pub struct DeleteRequest {
    /// Key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
}

/// One operation of a transaction branch.
#[derive(Debug, Serialize)]
pub enum RequestOp {
    /// Put.
    #[serde(rename = "request_put")]
    Put(PutRequest),
    /// Delete.
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRequest),
    /// Range.
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

/// `/v3/kv/txn`.
#[derive(Debug, Serialize)]
pub struct TxnRequest {
    /// Conditions.
    pub compare: Vec<Compare>,
    /// Run when every condition holds.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

/// One answer of a transaction branch (only ranges are read).
#[derive(Debug, Default, Deserialize)]
pub struct ResponseOp {
    /// Answer of a range.
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

/// Answer of `/v3/kv/txn`.
#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    /// Header (its revision is the transaction's when it succeeded).
    #[serde(default)]
    pub header: Header,
    /// The conditions held.
    #[serde(default)]
    pub succeeded: bool,
    /// Answers of the branch that ran.
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

/// `/v3/lease/grant`.
#[derive(Debug, Serialize)]
pub struct LeaseGrantRequest {
    /// Time to live, seconds.
    #[serde(rename = "TTL", with = "int")]
    pub ttl: u64,
}

/// `/v3/lease/keepalive` and `/v3/lease/revoke` requests.
#[derive(Debug, Serialize)]
pub struct LeaseIdRequest {
    /// The lease.
    #[serde(rename = "ID", with = "int")]
    pub id: u64,
}

/// Answer of `/v3/lease/grant` and (inside `result`) of `/v3/lease/keepalive`.
#[derive(Debug, Default, Deserialize)]
pub struct LeaseResponse {
    /// Lease id.
    #[serde(rename = "ID", default, with = "int")]
    pub id: u64,
    /// Remaining time to live; 0 when the lease no longer exists.
    #[serde(rename = "TTL", default, with = "int")]
    pub ttl: u64,
}

/// An item of a streamed answer (`/v3/lease/keepalive`, `/v3/watch`).
#[derive(Debug, Deserialize)]
pub struct Streamed<T> {
    /// The message; absent when the stream carries an error instead.
    pub result: Option<T>,
    /// The error.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// `/v3/watch` request: create a watcher.
#[derive(Debug, Serialize)]
pub struct WatchRequest {
    /// The watcher.
    pub create_request: WatchCreate,
}

/// `WatchCreateRequest`.
#[derive(Debug, Serialize)]
pub struct WatchCreate {
    /// First key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// End of the range (exclusive).
    #[serde(with = "b64")]
    pub range_end: Vec<u8>,
    /// First revision to report.
    #[serde(with = "int")]
    pub start_revision: u64,
}

/// A watch event.
#[derive(Debug, Deserialize)]
pub struct Event {
    /// `DELETE`, or absent for a put.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The key (for a delete: key and the delete's revision only).
    #[serde(default)]
    pub kv: KeyValue,
}

/// `WatchResponse`.
#[derive(Debug, Default, Deserialize)]
pub struct WatchResponse {
    /// Header.
    #[serde(default)]
    pub header: Header,
    /// The watcher was created.
    #[serde(default)]
    pub created: bool,
    /// The watcher was cancelled (see `compact_revision`).
    #[serde(default)]
    pub canceled: bool,
    /// Set when the requested start revision was compacted away.
    #[serde(default, with = "int")]
    pub compact_revision: u64,
    /// Why it was cancelled.
    #[serde(default)]
    pub cancel_reason: String,
    /// Events, in revision order.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// The gateway's error body: `{"error": "...", "message": "...", "code": 14}`.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// gRPC status code.
    #[serde(default)]
    pub code: i32,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// Message (older gateways).
    #[serde(default)]
    pub error: serde_json::Value,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` when invalid.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let digits = s.trim_end_matches('=').as_bytes();
    if digits.len() % 4 == 1 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"/netd/v1/", "L25ldGQvdjEv"),
            (b"/netd/v1/revision", "L25ldGQvdjEvcmV2aXNpb24="),
        ] {
            assert_eq!(encode(raw), enc);
            assert_eq!(decode(enc).unwrap(), raw);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert!(decode("a").is_none() && decode("a*==").is_none());
    }

    #[test]
    fn gateway_shapes() {
        // As etcd 3.4.23 answers (captured with curl).
        let w: Streamed<WatchResponse> = serde_json::from_str(
            r#"{"result":{"header":{"revision":"5"},"events":[{"type":"DELETE","kv":{"key":"L25ldGQvdjEveQ==","mod_revision":"5"}},{"kv":{"key":"L25ldGQvdjEveA==","create_revision":"2","mod_revision":"2","version":"1","value":"eHl6","lease":"4111120248387138316"}}]}}"#,
        )
        .unwrap();
        let w = w.result.unwrap();
        assert_eq!(w.events[0].kind.as_deref(), Some("DELETE"));
        assert_eq!(w.events[0].kv.mod_revision, 5);
        assert_eq!(w.events[1].kv.value, b"xyz");
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"3"},"responses":[{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"eA==","mod_revision":"3","value":"MQ=="}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        assert_eq!(
            t.responses[0].response_range.as_ref().unwrap().kvs[0].mod_revision,
            3
        );
        let body = serde_json::to_string(&RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
        }))
        .unwrap();
        assert_eq!(
            body,
            r#"{"request_put":{"key":"aw==","value":"dg==","lease":"7"}}"#
        );
    }
}
