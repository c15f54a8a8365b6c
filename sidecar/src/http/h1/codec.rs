//! The wire format of the upstream HTTP/1.1 client (RFC 9112): request heads written into the
//! connection's buffer, response heads parsed from it (hop-by-hop fields left out as they are
//! read), and bodies framed both ways (`Content-Length`, chunked, read to close).
//!
//! Pure functions over buffers; the connection in [`super`] does the I/O.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING,
};
use hyper::{Method, StatusCode};

use super::Error;
use crate::http::upstream::{hop_by_hop_index, strip_hop_by_hop};

/// Most header fields in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Largest response head, chunk-size line or trailer section accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// How the request's body is framed upstream, as hyper's client decides it: no body when the
/// body has already ended; chunked when the request says `Transfer-Encoding` (which must end
/// in `chunked`: hyper's server answered anything else with a 400); else its
/// `Content-Length`; else (a body of unknown length and no framing header) chunked.
pub fn request_framing(headers: &HeaderMap, body_ended: bool) -> ReqFraming {
    if body_ended {
        ReqFraming::Empty
    } else if headers.contains_key(TRANSFER_ENCODING) {
        ReqFraming::Chunked
    } else {
        match content_length(headers) {
            Ok(Some(n)) => ReqFraming::Length(n),
            _ => ReqFraming::Chunked,
        }
    }
}

/// Writes the request line and header fields into `dst`, as HTTP/1.1 (as nginx's
/// `proxy_http_version 1.1` and Envoy do: keep-alive and chunked work whatever the client
/// spoke) — except an HTTP/1.0 request without `Host`, which HTTP/1.1 would require: it
/// stays HTTP/1.0 and asks for keep-alive. Hop-by-hop fields are left out; when
/// `Connection` lists other fields, those go too (`headers` is edited then, which is rare).
/// The framing fields follow `framing`.
pub fn encode_head(
    method: &Method,
    uri: &hyper::Uri,
    version: hyper::Version,
    headers: &mut HeaderMap,
    framing: ReqFraming,
    dst: &mut Vec<u8>,
) {
    let start = dst.len();
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    match (uri.scheme(), uri.path_and_query()) {
        (None, Some(pq)) => dst.extend_from_slice(pq.as_str().as_bytes()),
        // Absolute form (or authority form) as received, as hyper's client writes it.
        _ => dst.extend_from_slice(uri.to_string().as_bytes()),
    }
    let http10 = version <= hyper::Version::HTTP_10 && !headers.contains_key(HOST);
    if http10 {
        dst.extend_from_slice(b" HTTP/1.0\r\nconnection: keep-alive\r\n");
    } else {
        dst.extend_from_slice(b" HTTP/1.1\r\n");
    }
    let fields = dst.len();
    if !write_fields(headers, framing, dst) {
        // `Connection` names more fields: remove them all and write the fields again.
        strip_hop_by_hop(headers);
        dst.truncate(fields);
        write_fields(headers, framing, dst);
    }
    if framing == ReqFraming::Chunked && !headers.contains_key(TRANSFER_ENCODING) {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    debug_assert!(dst.len() > start);
}

/// Writes the end-to-end fields; false when a `Connection` field lists other fields (which
/// were perhaps written: the caller strips and starts again).
fn write_fields(headers: &HeaderMap, framing: ReqFraming, dst: &mut Vec<u8>) -> bool {
    let mut plain = true;
    for (name, value) in headers {
        let n = name.as_str().as_bytes();
        if let Some(i) = hop_by_hop_index(n) {
            if i == 0 && lists_other_fields(value.as_bytes()) {
                plain = false;
            }
            continue;
        }
        // Chunked: a `Content-Length` would contradict it (RFC 9112 §6.3).
        if framing == ReqFraming::Chunked && *name == CONTENT_LENGTH {
            continue;
        }
        if framing == ReqFraming::Empty && *name == TRANSFER_ENCODING {
            continue;
        }
        dst.extend_from_slice(n);
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    plain
}

/// True when a `Connection` value names a field (not only `close` / `keep-alive` or the
/// fixed hop-by-hop names).
fn lists_other_fields(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && hop_by_hop_index_ci(t).is_none()
        })
}

/// [`hop_by_hop_index`] for a name in any case, as it comes off the wire (`Connection`).
fn hop_by_hop_index_ci(name: &[u8]) -> Option<u32> {
    let candidates: &[(&[u8], u32)] = match name.len() {
        2 => &[(b"te", 6)],
        7 => &[(b"upgrade", 1), (b"trailer", 7)],
        10 => &[(b"connection", 0), (b"keep-alive", 2)],
        16 => &[(b"proxy-connection", 3)],
        18 => &[(b"proxy-authenticate", 4)],
        19 => &[(b"proxy-authorization", 5)],
        _ => return None,
    };
    candidates
        .iter()
        .find(|(c, _)| name.eq_ignore_ascii_case(c))
        .map(|(_, i)| *i)
}

/// Appends one chunk of a chunked body.
pub fn encode_chunk(data: &[u8], dst: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(dst, "{:x}\r\n", data.len());
    dst.extend_from_slice(data);
    dst.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with `trailers` when given.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespFraming {
    /// No body (`HEAD`, 204, 304, `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes (the connection cannot be reused).
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    /// Status.
    pub status: StatusCode,
    /// A reason phrase other than the status's canonical one.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    /// Body framing.
    pub framing: RespFraming,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses a final response head from the front of `buf` into `headers` (which must be
/// empty; hop-by-hop fields are left out), skipping interim `1xx` responses. `Ok(None)`:
/// the head is not complete yet. The parsed bytes leave `buf`; header values share them.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    headers: &mut HeaderMap,
    names: &mut Names,
) -> Result<Option<Head>, Error> {
    loop {
        let Some(head) = parse_one(buf, method, headers, names)? else {
            if buf.len() > MAX_HEAD {
                return Err(Error::Protocol("response head too large"));
            }
            return Ok(None);
        };
        if head.status.is_informational() {
            // 100 Continue and friends: the final response follows.
            headers.clear();
            continue;
        }
        return Ok(Some(head));
    }
}

/// One response head (final or interim), consumed from `buf`.
fn parse_one(
    buf: &mut BytesMut,
    method: &Method,
    headers: &mut HeaderMap,
    names: &mut Names,
) -> Result<Option<Head>, Error> {
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    // Offsets of each field's name and value in the head, recorded while `buf` is borrowed.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let mut resp = httparse::Response::new(&mut []);
    let (len, code, version, count, reason) = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => {
            for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *span = (
                    name as u32,
                    (name + h.name.len()) as u32,
                    value as u32,
                    (value + h.value.len()) as u32,
                );
            }
            let code = resp.code.unwrap_or(0);
            let reason = resp.reason.unwrap_or("");
            let reason = (StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                != Some(reason))
            .then(|| Bytes::copy_from_slice(reason.as_bytes()));
            (
                len,
                code,
                resp.version.unwrap_or(1),
                resp.headers.len(),
                reason,
            )
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Parse(e)),
    };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Protocol("invalid status code"))?;
    let head_bytes = buf.split_to(len).freeze();
    let mut keep_alive = version == 1;
    let mut close = false;
    let mut relisted = false;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    headers.reserve(count);
    for (at, &(n0, n1, v0, v1)) in spans[..count].iter().enumerate() {
        let value = &head_bytes[v0 as usize..v1 as usize];
        let name = match names.get(at, &head_bytes[n0 as usize..n1 as usize])? {
            Name::Field(name) => name,
            Name::HopByHop(i) => {
                if i != 0 {
                    continue;
                }
                for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !t.is_empty() {
                        relisted = true;
                    }
                }
                if !relisted {
                    continue;
                }
                CONNECTION
            }
        };
        let value = head_bytes.slice(v0 as usize..v1 as usize);
        // SAFETY: httparse accepted these bytes as a field value (HTAB, SP, visible ASCII,
        // obs-text), all of which `HeaderValue` allows; checking them again cost ~200
        // instructions a response (hyper's client skips the check the same way).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        if name == TRANSFER_ENCODING {
            let last = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Protocol("conflicting Content-Length"));
            }
            length = Some(n);
        }
        headers.append(name, value);
    }
    if relisted {
        // `Connection` named end-to-end fields: they are hop-by-hop here (and it goes too).
        strip_hop_by_hop(headers);
    }
    let reason = match reason {
        Some(r) => Some(
            hyper::ext::ReasonPhrase::try_from(r)
                .map_err(|_| Error::Protocol("invalid reason phrase"))?,
        ),
        None => None,
    };
    let framing = match status.as_u16() {
        101 => {
            return Err(Error::Protocol(
                "101 Switching Protocols without an upgrade",
            ))
        }
        100..=199 | 204 | 304 => RespFraming::Empty,
        _ if *method == Method::HEAD => RespFraming::Empty,
        _ => match (chunked, length) {
            (Some(_), _) if version == 0 => {
                return Err(Error::Protocol("Transfer-Encoding in an HTTP/1.0 response"))
            }
            (Some(true), _) => RespFraming::Chunked,
            (Some(false), _) | (None, None) => RespFraming::Close,
            (None, Some(0)) => RespFraming::Empty,
            (None, Some(n)) => RespFraming::Length(n),
        },
    };
    let keep_alive = keep_alive && !close && framing != RespFraming::Close;
    Ok(Some(Head {
        status,
        reason,
        framing,
        keep_alive,
    }))
}

/// The field names of a connection's last response, as they came off the wire, with what
/// they stand for. An upstream answers with the same names in the same order response after
/// response, so a name is parsed (lowercased, matched against the standard names, allocated
/// when it is none of them) only when it differs from the one at its position last time.
#[derive(Debug, Default)]
pub struct Names(Vec<(Box<[u8]>, Name)>);

/// What a field name stands for.
#[derive(Debug, Clone)]
enum Name {
    /// A hop-by-hop field, by its index in [`HOP_BY_HOP`](crate::http::upstream).
    HopByHop(u32),
    /// An end-to-end field.
    Field(HeaderName),
}

impl Names {
    /// What the `at`th field name of a response, `raw`, stands for.
    fn get(&mut self, at: usize, raw: &[u8]) -> Result<Name, Error> {
        if let Some((seen, name)) = self.0.get(at) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = match hop_by_hop_index_ci(raw) {
            Some(i) => Name::HopByHop(i),
            None => Name::Field(
                HeaderName::from_bytes(raw).map_err(|_| Error::Protocol("invalid field name"))?,
            ),
        };
        let entry = (Box::from(raw), name.clone());
        if at < self.0.len() {
            self.0[at] = entry;
        } else if at == self.0.len() {
            self.0.push(entry);
        }
        Ok(name)
    }
}

/// A `Content-Length` value: digits (a list of equal values is accepted, RFC 9110 §8.6).
fn parse_length(v: &[u8]) -> Result<u64, Error> {
    // The usual value: one number.
    if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) {
        return Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let mut result = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Error::Protocol("invalid Content-Length"));
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return Err(Error::Protocol("conflicting Content-Length"));
        }
        result = Some(n);
    }
    result.ok_or(Error::Protocol("invalid Content-Length"))
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut result = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let n = parse_length(v.as_bytes())?;
        if result.is_some_and(|r| r != n) {
            return Err(Error::Protocol("conflicting Content-Length"));
        }
        result = Some(n);
    }
    Ok(result)
}

/// What the body decoder found in the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section of a chunked body (the body ends after it).
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    More,
}

/// A response body decoder over the connection's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// `Content-Length` bytes left.
    Length(u64),
    /// Chunked, in one of its states.
    Chunked(Chunk),
    /// Until end of stream.
    Close,
    /// Complete.
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// Up to `left` bytes off the front of `buf` (none when it is empty), and what is left after.
fn take(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = (buf.len() as u64).min(left);
    Some((buf.split_to(n as usize).freeze(), left - n))
}

impl Decoder {
    /// The decoder for a response's framing.
    pub fn new(framing: RespFraming) -> Self {
        match framing {
            RespFraming::Empty | RespFraming::Length(0) => Decoder::Done,
            RespFraming::Length(n) => Decoder::Length(n),
            RespFraming::Chunked => Decoder::Chunked(Chunk::Size),
            RespFraming::Close => Decoder::Close,
        }
    }

    /// True when the body has ended.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Takes what it can from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    let Some((data, rest)) = take(buf, left) else {
                        return Ok(Decoded::More);
                    };
                    *self = match rest {
                        0 => Decoder::Done,
                        _ => Decoder::Length(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = Decoder::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                        return Ok(Decoded::More)
                    }
                    _ => return Err(Error::Protocol("invalid chunk size")),
                },
                Decoder::Chunked(Chunk::Data(left)) => {
                    let Some((data, rest)) = take(buf, left) else {
                        return Ok(Decoded::More);
                    };
                    *self = Decoder::Chunked(match rest {
                        0 => Chunk::DataEnd,
                        _ => Chunk::Data(rest),
                    });
                    // The chunk's CRLF is usually there already: consume it now, so that a
                    // body whose last chunk is buffered ends without another read.
                    if *self == Decoder::Chunked(Chunk::DataEnd) && buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Chunked(Chunk::Size);
                    }
                    return Ok(Decoded::Data(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Protocol("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields.iter() {
                                let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) else {
                                    return Err(Error::Protocol("invalid trailer field"));
                                };
                                trailers.append(name, value);
                            }
                            buf.advance(used);
                            *self = Decoder::Done;
                            return Ok(Decoded::Trailers(trailers));
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                            return Ok(Decoded::More)
                        }
                        _ => return Err(Error::Protocol("invalid trailer section")),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], method: Method) -> (Result<Option<Head>, Error>, HeaderMap, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let mut headers = HeaderMap::new();
        let r = parse_head(&mut buf, &method, &mut headers, &mut Names::default());
        (r, headers, buf)
    }

    /// The head `encode_head` writes for an HTTP/1.1 request with `fields`.
    fn encoded(method: Method, uri: &str, fields: &[(&str, &str)], framing: ReqFraming) -> String {
        encoded_as(hyper::Version::HTTP_11, method, uri, fields, framing)
    }

    fn encoded_as(
        version: hyper::Version,
        method: Method,
        uri: &str,
        fields: &[(&str, &str)],
        framing: ReqFraming,
    ) -> String {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut dst = Vec::new();
        encode_head(
            &method,
            &uri.parse().unwrap(),
            version,
            &mut h,
            framing,
            &mut dst,
        );
        String::from_utf8(dst).unwrap()
    }

    #[test]
    fn request_heads_are_http11_without_hop_by_hop_fields() {
        let fields = [
            ("host", "web"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-a", "1"),
            ("x-a", "2"),
        ];
        assert_eq!(
            encoded(Method::GET, "/p?q=1", &fields, ReqFraming::Empty),
            "GET /p?q=1 HTTP/1.1\r\nhost: web\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        // Connection naming another field: that field goes too; chunked replaces a length.
        let fields = [
            ("x-first", "1"),
            ("connection", "X-First, close"),
            ("content-length", "5"),
            ("x-keep", "1"),
        ];
        assert_eq!(
            encoded(Method::POST, "http://web/x", &fields, ReqFraming::Chunked),
            "POST http://web/x HTTP/1.1\r\nx-keep: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // HTTP/1.0 goes out as HTTP/1.1 with a Host, as HTTP/1.0 (keep-alive) without.
        let v10 = hyper::Version::HTTP_10;
        assert_eq!(
            encoded_as(v10, Method::GET, "/", &[("host", "web")], ReqFraming::Empty),
            "GET / HTTP/1.1\r\nhost: web\r\n\r\n"
        );
        assert_eq!(
            encoded_as(
                v10,
                Method::GET,
                "/",
                &[("connection", "close")],
                ReqFraming::Empty
            ),
            "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        );
        let mut h = HeaderMap::new();
        assert_eq!(request_framing(&h, true), ReqFraming::Empty);
        h.insert("content-length", "7".parse().unwrap());
        assert_eq!(request_framing(&h, false), ReqFraming::Length(7));
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(request_framing(&h, false), ReqFraming::Chunked);
        let mut dst = Vec::new();
        encode_chunk(b"hello world, this is sixteen+", &mut dst);
        encode_last_chunk(None, &mut dst);
        assert_eq!(dst, b"1d\r\nhello world, this is sixteen+\r\n0\r\n\r\n");
    }

    #[test]
    fn response_heads_parse_with_framing_and_without_hop_by_hop_fields() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello";
        let (r, h, rest) = head(raw, Method::GET);
        let ok = r.unwrap().unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.framing, RespFraming::Length(5));
        assert!(ok.keep_alive);
        assert!(ok.reason.is_none());
        assert_eq!(h.len(), 2);
        assert_eq!(h["server"], "x");
        assert_eq!(&rest[..], b"hello");

        // Partial heads wait; close, chunked, HEAD, 204, 1.0 and odd reasons are understood.
        let (r, _, _) = head(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(r.unwrap().is_none());
        let (r, h, _) = head(
            b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\n",
            Method::GET,
        );
        let head1 = r.unwrap().unwrap();
        assert_eq!(head1.framing, RespFraming::Chunked);
        assert!(!head1.keep_alive);
        assert_eq!(head1.reason.unwrap().as_bytes(), b"Fine");
        assert!(!h.contains_key("x-drop") && !h.contains_key("connection"));
        let (r, _, _) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!(r.unwrap().unwrap().framing, RespFraming::Empty);
        let (r, _, _) = head(b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET);
        assert_eq!(r.unwrap().unwrap().framing, RespFraming::Empty);
        let (r, _, _) = head(b"HTTP/1.0 200 OK\r\n\r\n", Method::GET);
        let h10 = r.unwrap().unwrap();
        assert_eq!(h10.framing, RespFraming::Close);
        assert!(!h10.keep_alive);
        let (r, _, _) = head(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(r.unwrap().unwrap().keep_alive);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).0.is_err());
        }
    }

    #[test]
    fn field_names_are_remembered_by_position_and_relearned_when_they_change() {
        let mut names = Names::default();
        let heads: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 2\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-B: 3\r\nContent-Length: 0\r\nX-C: 4\r\n\r\n",
        ];
        let expected: [&[&str]; 3] = [
            &["x-a:1", "content-length:0"],
            &["x-a:2", "content-length:0"],
            &["x-b:3", "content-length:0", "x-c:4"],
        ];
        for (raw, expected) in heads.iter().zip(expected) {
            let mut buf = BytesMut::from(*raw);
            let mut h = HeaderMap::new();
            let head = parse_head(&mut buf, &Method::GET, &mut h, &mut names);
            assert!(!head.unwrap().unwrap().keep_alive);
            let got: Vec<String> = h
                .iter()
                .map(|(n, v)| format!("{n}:{}", v.to_str().unwrap()))
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn chunked_bodies_decode_across_reads_with_trailers() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        // Fed one byte at a time, and all at once: same data, same trailers.
        for step in [1, wire.len()] {
            let mut d = Decoder::new(RespFraming::Chunked);
            let mut buf = BytesMut::new();
            let (mut data, mut trailers, mut ended) = (Vec::new(), None, false);
            let mut fed = 0;
            while !ended {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(b) => data.extend_from_slice(&b),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => ended = true,
                    Decoded::More => {
                        let next = (fed + step).min(wire.len());
                        assert!(next > fed, "stuck");
                        buf.extend_from_slice(&wire[fed..next]);
                        fed = next;
                    }
                }
            }
            assert_eq!(data, b"hello world");
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
            assert!(d.is_done());
        }
        let mut d = Decoder::new(RespFraming::Chunked);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.decode(&mut buf).is_err());
        let mut d = Decoder::new(RespFraming::Length(3));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Data(b) if b == "abc"));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"def");
    }
}
