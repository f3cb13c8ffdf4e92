//! The client side of an SRMP post, sans-IO: where a `DIRECT=HTTP(S)://` format name posts
//! to, and the reading of the HTTP/1.1 answer. The connection and its bytes belong to whoever
//! drives it (the sending queue manager's outgoing queue); this file owns no socket and no clock.

use crate::wire::format_name::{DirectAddress, DirectName};

/// Largest response head read (status line and headers).
pub const SRMP_RESPONSE_HEAD_BYTES_MAX: usize = 16 << 10;
/// Largest response body read (an SRMP answer is empty or a short fault).
pub const SRMP_RESPONSE_BODY_BYTES_MAX: usize = 64 << 10;
/// Response headers looked at, at most.
const SRMP_RESPONSE_HEADERS_MAX: usize = 64;

/// Where a message for an HTTP(S) format name is posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostTarget {
    pub host: String,
    pub port: u16,
    pub https: bool,
    /// The request path, `/msmq/private$/q` (escaped as a URI path).
    pub path: String,
    /// The `<to>` URI of the envelope: `http://host[:port]/msmq/private$/q`.
    pub to: String,
}

impl PostTarget {
    /// The target of a direct HTTP or HTTPS name; `None` for other transports.
    pub fn of(d: &DirectName) -> Option<PostTarget> {
        let (host, port, https) = match &d.address {
            DirectAddress::Http { host, port } => (host, *port, false),
            DirectAddress::Https { host, port } => (host, *port, true),
            _ => return None,
        };
        // `DIRECT=HTTP://host/msmq/private$/q` displays as such; the path is what follows host.
        let shown = d.to_string();
        let after_scheme = shown.split_once("://")?.1;
        let path_at = after_scheme.find('/')?;
        let mut path = after_scheme[path_at..].to_string();
        // The display writes `PRIVATE$`; Windows' URIs (MC-MQSRM section 4) say `private$`.
        if path
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("/msmq/private$/"))
        {
            path.replace_range(..15, "/msmq/private$/");
        }
        let path = escape_path(&path);
        let host_text = host.to_string();
        let authority = match port {
            Some(p) => format!("{host_text}:{p}"),
            None => host_text.clone(),
        };
        let scheme = if https { "https" } else { "http" };
        Some(PostTarget {
            to: format!("{scheme}://{authority}{path}"),
            port: port.unwrap_or(if https { 443 } else { 80 }),
            host: host_text,
            https,
            path,
        })
    }

    /// The `Host:` header value.
    pub fn host_header(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Percent-escapes what may not stand in a URI path (RFC 3986 pchar plus `/`); `$` stays.
fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server closes the connection after this answer (`Connection: close` or HTTP/1.0).
    pub close: bool,
}

/// Why an answer could not be read: the connection is closed and the message sent again later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    Malformed(String),
    TooLarge(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Malformed(why) => write!(f, "malformed HTTP answer: {why}"),
            ReadError::TooLarge(what) => write!(f, "HTTP answer {what} too large"),
        }
    }
}

/// Reads one HTTP/1.1 answer after another from the bytes of a connection.
#[derive(Debug, Default)]
pub struct ResponseReader {
    buf: Vec<u8>,
    /// The head was read: status, close, and body bytes still to skip.
    head: Option<(Response, BodyLeft)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLeft {
    Length(usize),
    /// Until the connection closes (no length, no chunking): the answer is complete only then.
    UntilClose,
    Chunked,
}

impl ResponseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received; returns an answer once a whole one is in. Call again with `&[]` to
    /// take a further answer already buffered (pipelined posts).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Response>, ReadError> {
        self.buf.extend_from_slice(bytes);
        if self.head.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; SRMP_RESPONSE_HEADERS_MAX];
            let mut r = httparse::Response::new(&mut headers);
            let used = match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > SRMP_RESPONSE_HEAD_BYTES_MAX {
                        return Err(ReadError::TooLarge("head"));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(ReadError::Malformed(e.to_string())),
            };
            let status = r.code.unwrap_or(0);
            let mut close = r.version == Some(0);
            let mut body = None;
            for h in r.headers.iter() {
                let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                if h.name.eq_ignore_ascii_case("content-length") {
                    let n: usize = v
                        .parse()
                        .map_err(|_| ReadError::Malformed(format!("Content-Length {v:?}")))?;
                    if n > SRMP_RESPONSE_BODY_BYTES_MAX {
                        return Err(ReadError::TooLarge("body"));
                    }
                    body = Some(BodyLeft::Length(n));
                } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    body = Some(BodyLeft::Chunked);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let v = v.to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
            }
            // 1xx, 204 and 304 carry no body (RFC 9112 6.3).
            let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
            let left = if bodyless {
                BodyLeft::Length(0)
            } else {
                body.unwrap_or(BodyLeft::UntilClose)
            };
            if left == BodyLeft::UntilClose {
                close = true;
            }
            self.buf.drain(..used);
            if (100..200).contains(&status) {
                // An interim answer (100 Continue): the real one follows.
                return self.feed(&[]);
            }
            self.head = Some((Response { status, close }, left));
        }
        let Some((resp, left)) = self.head.clone() else {
            return Ok(None);
        };
        let consumed = match left {
            BodyLeft::Length(n) => {
                if self.buf.len() < n {
                    return Ok(None);
                }
                n
            }
            BodyLeft::UntilClose => {
                if self.buf.len() > SRMP_RESPONSE_BODY_BYTES_MAX {
                    return Err(ReadError::TooLarge("body"));
                }
                return Ok(None);
            }
            BodyLeft::Chunked => match chunked_len(&self.buf)? {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        self.buf.drain(..consumed);
        self.head = None;
        Ok(Some(resp))
    }

    /// The connection closed: an answer that ran until the close is complete now.
    pub fn closed(&mut self) -> Option<Response> {
        match self.head.take() {
            Some((resp, BodyLeft::UntilClose)) => Some(resp),
            _ => None,
        }
    }
}

/// The length of a whole chunked body at the front of `buf` (trailers included), if it is in.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, ReadError> {
    let mut at = 0usize;
    let mut total = 0usize;
    loop {
        let Some(eol) = memchr::memmem::find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol])
            .map_err(|_| ReadError::Malformed("chunk size is not text".into()))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Malformed(format!("chunk size {size_text:?}")))?;
        total = total.saturating_add(size);
        if total > SRMP_RESPONSE_BODY_BYTES_MAX {
            return Err(ReadError::TooLarge("body"));
        }
        at += eol + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(eol) = memchr::memmem::find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let end = at.saturating_add(size).saturating_add(2);
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::format_name::FormatName;

    fn direct(s: &str) -> DirectName {
        FormatName::parse(s).unwrap().as_direct().unwrap().clone()
    }

    #[test]
    fn http_names_post_to_their_msmq_path() {
        let t = PostTarget::of(&direct("DIRECT=HTTP://machine2/msmq/private$/simpleq")).unwrap();
        assert_eq!(t.host, "machine2");
        assert_eq!(t.port, 80);
        assert!(!t.https);
        assert_eq!(t.path, "/msmq/private$/simpleq");
        assert_eq!(t.to, "http://machine2/msmq/private$/simpleq");
        assert_eq!(t.host_header(), "machine2");
        let t = PostTarget::of(&direct("DIRECT=HTTPS://10.0.0.7:8443/msmq/private$/café")).unwrap();
        assert_eq!((t.port, t.https), (8443, true));
        assert_eq!(t.path, "/msmq/private$/caf%C3%A9");
        assert_eq!(t.host_header(), "10.0.0.7:8443");
        assert!(PostTarget::of(&direct("DIRECT=TCP:10.0.0.7\\private$\\q")).is_none());
    }

    #[test]
    fn answers_are_read_whole_in_any_split_and_pipelined() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for split in 0..two.len() {
            let mut r = ResponseReader::new();
            let mut got = Vec::new();
            for part in [&two[..split], &two[split..]] {
                let mut next = r.feed(part).unwrap();
                while let Some(resp) = next {
                    got.push(resp);
                    next = r.feed(&[]).unwrap();
                }
            }
            assert_eq!(
                got,
                vec![
                    Response {
                        status: 200,
                        close: false
                    },
                    Response {
                        status: 500,
                        close: true
                    }
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn interim_and_close_delimited_answers() {
        let mut r = ResponseReader::new();
        assert_eq!(
            r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nbody")
                .unwrap(),
            None
        );
        assert_eq!(
            r.closed(),
            Some(Response {
                status: 200,
                close: true
            })
        );
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let mut r = ResponseReader::new();
        assert!(matches!(
            r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(ReadError::TooLarge("body"))
        ));
        let mut r = ResponseReader::new();
        assert!(matches!(
            r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        let mut r = ResponseReader::new();
        assert!(matches!(
            r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ReadError::Malformed(_))
        ));
        let mut r = ResponseReader::new();
        let long = vec![b'a'; SRMP_RESPONSE_HEAD_BYTES_MAX + 10];
        assert!(r.feed(b"HTTP/1.1 200 OK\r\nX: ").unwrap().is_none());
        assert!(matches!(r.feed(&long), Err(ReadError::TooLarge("head"))));
        let mut r = ResponseReader::new();
        assert!(matches!(
            r.feed(b"GARBAGE\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
    }
}
