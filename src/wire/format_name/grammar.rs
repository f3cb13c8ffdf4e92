//! The text grammar of format names (MS-MQMQ 2.1.2-2.1.7): [`FormatName::parse`] and
//! [`DirectName::parse_wire`]. Keywords match without regard to case; names keep theirs.
//!
//! Positions are byte offsets into the whole input until the public entry points turn them into
//! character positions. Every slice is taken at an ASCII delimiter found by `find`, or with
//! `get`, so no index can fall inside a character or past the end.

use std::net::Ipv4Addr;
use std::str::FromStr;

use super::error::{FormatNameError, FormatNameErrorKind as K, Result};
use super::names::{
    starts_with_ci, DomainName, HostName, IpxAddress, Keyword, MulticastAddress, QueueName,
    SubqueueName, MULTIPLE_ELEMENTS_MAX,
};
use super::{
    DirectAddress, DirectName, FormatName, MultipleElements, Protocol, QueuePath, QueueSuffix,
    SystemQueue,
};
use crate::wire::Guid;

impl FormatName {
    /// Parses any format name, including multiple-element names. Never panics.
    pub fn parse(s: &str) -> Result<FormatName> {
        parse_format_name(s).map_err(|e| e.byte_to_char_position(s))
    }
}

impl FromStr for FormatName {
    type Err = FormatNameError;

    fn from_str(s: &str) -> Result<FormatName> {
        FormatName::parse(s)
    }
}

impl Protocol {
    fn parse(s: &str) -> Option<Protocol> {
        [
            Protocol::Tcp,
            Protocol::Os,
            Protocol::Http,
            Protocol::Https,
            Protocol::Ipx,
            Protocol::Spx,
        ]
        .into_iter()
        .find(|p| s.eq_ignore_ascii_case(p.keyword()))
    }
}

impl DirectName {
    /// Parses a direct name without its `DIRECT=` prefix, as found on the wire
    /// (`OS:a04bm02\q`, `TCP:192.0.2.10\PRIVATE$\order_queue$`, `HTTP://host/msmq/private$/q`).
    pub fn parse_wire(s: &str) -> Result<DirectName> {
        parse_direct_body(s, 0).map_err(|e| e.byte_to_char_position(s))
    }
}

impl Keyword {
    fn system_queue(self) -> Option<SystemQueue> {
        match self {
            Keyword::Journal => Some(SystemQueue::Journal),
            Keyword::DeadLetter => Some(SystemQueue::DeadLetter),
            Keyword::DeadXact => Some(SystemQueue::DeadXact),
            Keyword::XactOnly => None,
        }
    }
}

/// Parses an optional `;KEYWORD` tail (nothing else may follow). `base` is the tail's offset.
fn parse_tail_keyword(tail: &str, base: usize) -> Result<Option<Keyword>> {
    if tail.is_empty() {
        return Ok(None);
    }
    let Some(word) = tail.strip_prefix(';') else {
        return Err(FormatNameError::at(K::TrailingText, base));
    };
    Keyword::parse(word)
        .map(Some)
        .ok_or(FormatNameError::at(K::BadSuffix, base + 1))
}

/// Parses a GUID at the start of `s` (36 characters, or 38 with braces, which Windows never
/// writes in format names but users copy from elsewhere). Returns the rest of `s`.
fn parse_guid(s: &str, base: usize) -> Result<(Guid, &str)> {
    let len = if s.starts_with('{') { 38 } else { 36 };
    let bad = FormatNameError::at(K::BadGuid, base);
    let text = s.get(..len).ok_or(bad)?;
    let inner = if len == 38 {
        text.strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or(bad)?
    } else {
        text
    };
    // Guid::parse_text trims spaces and the uuid crate accepts other spellings, so check the
    // exact 8-4-4-4-12 shape first.
    let shape_ok = inner.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    if !shape_ok {
        return Err(bad);
    }
    let guid = Guid::parse_text(inner).ok_or(bad)?;
    Ok((guid, s.get(len..).unwrap_or("")))
}

fn parse_format_name(s: &str) -> Result<FormatName> {
    if s.is_empty() {
        return Err(FormatNameError::at(K::Empty, 0));
    }
    if !s.contains(',') {
        return parse_element(s, 0);
    }
    let mut elements = Vec::new();
    let mut base = 0usize;
    for part in s.split(',') {
        if elements.len() == MULTIPLE_ELEMENTS_MAX {
            return Err(FormatNameError::at(K::TooManyElements, base));
        }
        if part.is_empty() {
            return Err(FormatNameError::at(K::EmptyElement, base));
        }
        let element = parse_element(part, base)?;
        if !element.allowed_in_multiple() {
            return Err(FormatNameError::at(K::NotAllowedInMultiple, base));
        }
        elements.push(element);
        base += part.len() + 1;
    }
    Ok(FormatName::Multiple(MultipleElements(elements)))
}

fn parse_element(s: &str, base: usize) -> Result<FormatName> {
    let Some(eq) = s.find('=') else {
        return Err(FormatNameError::at(K::UnknownType, base));
    };
    let (kind, body) = (&s[..eq], &s[eq + 1..]);
    let at = base + eq + 1;
    if kind.eq_ignore_ascii_case("DIRECT") {
        parse_direct_body(body, at).map(FormatName::Direct)
    } else if kind.eq_ignore_ascii_case("PUBLIC") {
        let (queue, rest) = parse_guid(body, at)?;
        let journal = parse_journal_only(rest, at + (body.len() - rest.len()))?;
        Ok(FormatName::Public { queue, journal })
    } else if kind.eq_ignore_ascii_case("PRIVATE") {
        parse_private(body, at)
    } else if kind.eq_ignore_ascii_case("MACHINE") {
        let (qm, rest) = parse_guid(body, at)?;
        let rest_at = at + (body.len() - rest.len());
        let queue = match parse_tail_keyword(rest, rest_at)? {
            None => return Err(FormatNameError::at(K::MissingSuffix, rest_at)),
            Some(k) => k
                .system_queue()
                .ok_or(FormatNameError::at(K::SuffixNotAllowed, rest_at + 1))?,
        };
        Ok(FormatName::Machine { qm, queue })
    } else if kind.eq_ignore_ascii_case("CONNECTOR") {
        let (id, rest) = parse_guid(body, at)?;
        let rest_at = at + (body.len() - rest.len());
        let xact_only = match parse_tail_keyword(rest, rest_at)? {
            None => false,
            Some(Keyword::XactOnly) => true,
            Some(_) => return Err(FormatNameError::at(K::SuffixNotAllowed, rest_at + 1)),
        };
        Ok(FormatName::Connector { id, xact_only })
    } else if kind.eq_ignore_ascii_case("DL") {
        let (id, rest) = parse_guid(body, at)?;
        let rest_at = at + (body.len() - rest.len());
        let domain = if rest.is_empty() {
            None
        } else if let Some(d) = rest.strip_prefix('@') {
            Some(DomainName::new(d).map_err(|e| e.shift(rest_at + 1))?)
        } else if rest.starts_with(';') {
            return Err(FormatNameError::at(K::SuffixNotAllowed, rest_at + 1));
        } else {
            return Err(FormatNameError::at(K::TrailingText, rest_at));
        };
        Ok(FormatName::DistributionList { id, domain })
    } else if kind.eq_ignore_ascii_case("MULTICAST") {
        parse_multicast(body)
            .map(FormatName::Multicast)
            .ok_or(FormatNameError::at(K::BadMulticast, at))
    } else {
        Err(FormatNameError::at(K::UnknownType, base))
    }
}

/// `[;JOURNAL]`, the only suffix PUBLIC= and PRIVATE= take (QUEUE_FORMAT 2.2.7 forbids
/// DEADLETTER and DEADXACT on them, and XACTONLY is for connectors).
fn parse_journal_only(rest: &str, base: usize) -> Result<bool> {
    match parse_tail_keyword(rest, base)? {
        None => Ok(false),
        Some(Keyword::Journal) => Ok(true),
        Some(_) => Err(FormatNameError::at(K::SuffixNotAllowed, base + 1)),
    }
}

fn parse_private(body: &str, at: usize) -> Result<FormatName> {
    let (qm, rest) = parse_guid(body, at)?;
    let rest_at = at + (body.len() - rest.len());
    let Some(id_text) = rest.strip_prefix('\\') else {
        return Err(FormatNameError::at(K::BadPrivateId, rest_at));
    };
    let id_end = id_text.find(';').unwrap_or(id_text.len());
    let digits = &id_text[..id_end];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FormatNameError::at(K::BadPrivateId, rest_at + 1));
    }
    let id = u32::from_str_radix(digits, 16)
        .map_err(|_| FormatNameError::at(K::BadPrivateId, rest_at + 1))?;
    let journal = parse_journal_only(&id_text[id_end..], rest_at + 1 + id_end)?;
    Ok(FormatName::Private { qm, id, journal })
}

/// `a.b.c.d:port` with the MS-MQMQ 2.1.6 rules: octets without leading zeros, first octet
/// 224-239, port 0-65535 without leading zeros. (The spec's `Port` ABNF has a typo that leaves
/// out 20-99 and 200-999; the comments beside it say 0-65535, which is what is meant.)
fn parse_multicast(body: &str) -> Option<MulticastAddress> {
    let (ip, port) = body.split_once(':')?;
    // Rust's Ipv4Addr parser takes exactly four decimal octets and refuses leading zeros.
    let ip: Ipv4Addr = ip.parse().ok()?;
    let port = parse_port(port)?;
    MulticastAddress::new(ip, port)
}

fn parse_port(s: &str) -> Option<u16> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses `Protocol:Address\QueuePath` (a direct name without `DIRECT=`).
fn parse_direct_body(s: &str, base: usize) -> Result<DirectName> {
    let Some(colon) = s.find(':') else {
        return Err(FormatNameError::at(K::UnknownProtocol, base));
    };
    let protocol =
        Protocol::parse(&s[..colon]).ok_or(FormatNameError::at(K::UnknownProtocol, base))?;
    let rest = &s[colon + 1..];
    let rest_at = base + colon + 1;
    if protocol.is_http() {
        return parse_http_body(protocol, rest, rest_at);
    }
    let Some(slash) = rest.find('\\') else {
        return Err(FormatNameError::at(K::MissingQueue, rest_at + rest.len()));
    };
    let addr = &rest[..slash];
    let address = match protocol {
        Protocol::Tcp => DirectAddress::Tcp(
            addr.parse()
                .map_err(|_| FormatNameError::at(K::BadTcpAddress, rest_at))?,
        ),
        Protocol::Os => DirectAddress::Os(HostName::new(addr).map_err(|e| e.shift(rest_at))?),
        Protocol::Ipx | Protocol::Spx => {
            let a =
                IpxAddress::parse(addr).ok_or(FormatNameError::at(K::BadIpxAddress, rest_at))?;
            if protocol == Protocol::Ipx {
                DirectAddress::Ipx(a)
            } else {
                DirectAddress::Spx(a)
            }
        }
        Protocol::Http | Protocol::Https => {
            return Err(FormatNameError::at(K::UnknownProtocol, base));
        }
    };
    let queue = parse_queue_path(&rest[slash + 1..], false, rest_at + slash + 1)?;
    Ok(DirectName { address, queue })
}

/// Parses `//host[:port]/msmq` followed by `/` or `\` and the queue path. The 2.1.2 rule
/// `Port = *(%x30-39)` would allow an empty port; we refuse it, because `host:` with nothing
/// after it is a typo far more often than a request for the default port.
fn parse_http_body(protocol: Protocol, s: &str, base: usize) -> Result<DirectName> {
    let bad = FormatNameError::at(K::BadHttpAddress, base);
    let Some(after) = s.strip_prefix("//") else {
        return Err(bad);
    };
    let at = base + 2;
    // The host ends at the first '/', which starts "/msmq".
    let Some(slash) = after.find('/') else {
        return Err(bad);
    };
    let authority = &after[..slash];
    let (host_text, port_text) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(close) => {
                let port = authority[close + 1..].strip_prefix(':');
                if port.is_none() && close + 1 != authority.len() {
                    return Err(FormatNameError::at(K::HostBadChar, at + close + 1));
                }
                (&authority[..close + 1], port)
            }
            None => return Err(FormatNameError::at(K::HostBadChar, at)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host = HostName::new(host_text).map_err(|e| e.shift(at))?;
    let port = match port_text {
        None => None,
        Some(p) => {
            Some(parse_port(p).ok_or(FormatNameError::at(K::BadPort, at + host_text.len() + 1))?)
        }
    };
    let path = &after[slash..];
    let path_at = at + slash;
    if !starts_with_ci(path, "/msmq") {
        return Err(FormatNameError::at(K::BadHttpAddress, path_at));
    }
    let queue_part = &path[5..];
    let queue_text = match queue_part.strip_prefix(['/', '\\']) {
        Some(q) => q,
        None if queue_part.is_empty() => {
            return Err(FormatNameError::at(K::MissingQueue, path_at + 5));
        }
        None => return Err(FormatNameError::at(K::BadHttpAddress, path_at)),
    };
    let queue = parse_queue_path(queue_text, true, path_at + 6)?;
    let address = if protocol == Protocol::Http {
        DirectAddress::Http { host, port }
    } else {
        DirectAddress::Https { host, port }
    };
    Ok(DirectName { address, queue })
}

/// Parses `PRIVATE$\name[;suffix]`, `name[;suffix]` or `SYSTEM$;KIND`. HTTP names accept `/` as
/// well as `\` after `PRIVATE$` (MSMQ HTTP support documentation).
///
/// Subqueues (`;name`, 2.1.1 for MSMQ 4.0+) are accepted only here, in direct names: the 2.1.3
/// and 2.1.4 rules allow no subqueue, and Microsoft's subqueue documentation says a subqueue
/// can be addressed only with a direct format name (QUEUE_FORMAT_TYPE_SUBQUEUE, 2.2.6, also
/// carries a direct name).
fn parse_queue_path(s: &str, http: bool, base: usize) -> Result<QueuePath> {
    if s.is_empty() {
        return Err(FormatNameError::at(K::MissingQueue, base));
    }
    if starts_with_ci(s, "SYSTEM$;") {
        let kind = Keyword::parse(&s[8..])
            .and_then(Keyword::system_queue)
            .ok_or(FormatNameError::at(K::BadSystemQueue, base + 8))?;
        return Ok(QueuePath::System(kind));
    }
    let private_rest = if starts_with_ci(s, "PRIVATE$") {
        match s.as_bytes().get(8) {
            Some(b'\\') => Some(&s[9..]),
            Some(b'/') if http => Some(&s[9..]),
            _ => None,
        }
    } else {
        None
    };
    let (rest, rest_at) = match private_rest {
        Some(r) => (r, base + 9),
        None => (s, base),
    };
    let name_end = rest.find(';').unwrap_or(rest.len());
    let name = QueueName::new(&rest[..name_end]).map_err(|e| e.shift(rest_at))?;
    let suffix_text = &rest[name_end..];
    let suffix = match suffix_text.strip_prefix(';') {
        None => QueueSuffix::None,
        Some(t) => match Keyword::parse(t) {
            Some(Keyword::Journal) => QueueSuffix::Journal,
            // A queue's dead-letter queue does not exist: DEADLETTER/DEADXACT belong after
            // SYSTEM$; and XACTONLY after CONNECTOR= (QUEUE_FORMAT 2.2.7).
            Some(_) => {
                return Err(FormatNameError::at(
                    K::SuffixNotAllowed,
                    rest_at + name_end + 1,
                ))
            }
            None => QueueSuffix::Subqueue(
                SubqueueName::new(t).map_err(|e| e.shift(rest_at + name_end + 1))?,
            ),
        },
    };
    let queue = if private_rest.is_some() {
        QueuePath::Private { name, suffix }
    } else {
        QueuePath::Public { name, suffix }
    };
    Ok(queue)
}
