//! Format names (MS-MQMQ 2.1): owns the text grammar (parse, canonical print, limits) and the
//! mapping to and from the UserHeader queue encodings; it must not do IO, consult a directory,
//! or panic on any input.
//!
//! A [`FormatName`] is owned (it comes from configuration, the admin API or, rarely, from a
//! direct name on the wire), so it holds `String`s; the hot path keeps the raw wire bytes and
//! only comes here when it needs to know which local queue a direct name means.
//!
//! Keywords (`DIRECT=`, `TCP:`, `PRIVATE$`, `;JOURNAL`, ...) are matched without regard to case,
//! as MSMQ does. Host and queue names keep the case they were written in, so a name prints back
//! as the user typed it, but MSMQ compares them case-insensitively: use
//! [`FormatName::eq_ignore_case`] or [`FormatName::normalized_key`] for lookups, not `==`.
//!
//! Canonical print: keywords in the spelling of the MS-MQMQ 2.1 ABNF (`DIRECT=TCP:`,
//! `\PRIVATE$\`, `\SYSTEM$;DEADLETTER`), GUIDs as lowercase 8-4-4-4-12 hex without braces (the
//! 2.1.3 `Guid` rule; Windows prints them that way), private queue numbers as 8 lowercase hex
//! digits, HTTP(S) names with `/` separators after `/msmq`.
//! Note: DIGEST §8.4 writes `private$` in lowercase in a derived example. The spec's ABNF (2.1.2)
//! and MS-MQQB 3.1.7.17 (`DIRECT=TCP:address\PRIVATE$\order_queue$`) spell it `PRIVATE$`, so that
//! is what we print; the byte length is the same and peers compare case-insensitively.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use super::user::QueueRef;
use super::{utf16z, Guid, Utf16};

/// Longest computer name in a path or direct name (MS-MQMQ 2.1.1 `Computer = 1*256(VCHAR)`).
pub const COMPUTER_NAME_LEN_MAX: usize = 256;
/// Longest queue name, in UTF-16 code units (MS-MQMQ 2.1.1 `QueueName = 1*124(...)`).
pub const QUEUE_NAME_LEN_MAX: usize = 124;
/// Longest subqueue name, in UTF-16 code units (MS-MQMQ 2.1.1 `Subqueue = 1*32(...)`).
pub const SUBQUEUE_NAME_LEN_MAX: usize = 32;
/// Longest Active Directory domain in a DL name (MS-MQMQ 2.1.5 `DomainName = 1*255(VCHAR)`).
pub const DOMAIN_NAME_LEN_MAX: usize = 255;
/// Most elements lior accepts in one multiple-element name. The spec sets no limit; this bound
/// keeps the work for one hostile string finite (TIGER_STYLE: every list has a named limit).
pub const MULTIPLE_ELEMENTS_MAX: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What is wrong with a format name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatNameErrorKind {
    Empty,
    UnknownType,
    BadGuid,
    UnknownProtocol,
    BadTcpAddress,
    BadIpxAddress,
    HostEmpty,
    HostTooLong,
    HostBadChar,
    BadHttpAddress,
    BadPort,
    MissingQueue,
    QueueNameEmpty,
    QueueNameTooLong,
    QueueNameBadChar,
    QueueNameReserved,
    SubqueueEmpty,
    SubqueueTooLong,
    SubqueueBadChar,
    SubqueueReserved,
    BadSystemQueue,
    BadPrivateId,
    BadSuffix,
    SuffixNotAllowed,
    MissingSuffix,
    BadDomain,
    BadMulticast,
    EmptyElement,
    NotAllowedInMultiple,
    TooManyElements,
    TrailingText,
    BadUtf16,
    WireNameTooLong,
    NoWireEncoding,
    WrongQueueManager,
    NoQueue,
    NeedsAdminQueue,
}

impl FormatNameErrorKind {
    /// A sentence for the user that says what is wrong (the position is added by the error).
    pub fn describe(self) -> &'static str {
        use FormatNameErrorKind::*;
        match self {
            Empty => "the format name is empty",
            UnknownType => {
                "expected DIRECT=, PUBLIC=, PRIVATE=, MACHINE=, CONNECTOR=, DL= or MULTICAST="
            }
            BadGuid => "expected a GUID written as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            UnknownProtocol => "expected a protocol: TCP:, OS:, HTTP:, HTTPS:, IPX: or SPX:",
            BadTcpAddress => "TCP: needs an IPv4 or IPv6 address (use OS: for a computer name)",
            BadIpxAddress => "IPX:/SPX: need network:node as 1-8 and 1-12 hex digits",
            HostEmpty => "the computer name is empty",
            HostTooLong => "the computer name is longer than 256 characters",
            HostBadChar => {
                "the computer name may only hold visible ASCII characters other than \\ / , ; \" \
                 (and ':' only inside [IPv6] brackets)"
            }
            BadHttpAddress => "an HTTP(S) address must be written //host[:port]/msmq",
            BadPort => "the port must be a decimal number from 0 to 65535",
            MissingQueue => "expected \\ and a queue name after the address",
            QueueNameEmpty => "the queue name is empty",
            QueueNameTooLong => "the queue name is longer than 124 characters",
            QueueNameBadChar => {
                "the queue name holds a character MSMQ forbids (space, control, \\ ; + , \")"
            }
            QueueNameReserved => "PRIVATE$ and SYSTEM$ are keywords, not queue names",
            SubqueueEmpty => "the subqueue name after ';' is empty",
            SubqueueTooLong => "the subqueue name is longer than 32 characters",
            SubqueueBadChar => {
                "the subqueue name holds a character MSMQ forbids (space, control, \\ ; + , \")"
            }
            SubqueueReserved => {
                "JOURNAL, DEADLETTER, DEADXACT and XACTONLY are suffixes, not subqueue names"
            }
            BadSystemQueue => "after SYSTEM$; expected JOURNAL, DEADLETTER or DEADXACT",
            BadPrivateId => "expected \\ and a private queue number of 1 to 8 hex digits",
            BadSuffix => "unknown suffix: expected ;JOURNAL, ;DEADLETTER, ;DEADXACT or ;XACTONLY",
            SuffixNotAllowed => "this suffix is not allowed on this kind of format name",
            MissingSuffix => "MACHINE= needs ;JOURNAL, ;DEADLETTER or ;DEADXACT",
            BadDomain => "the DL domain must be 1-255 visible ASCII characters without ','",
            BadMulticast => "expected MULTICAST=a.b.c.d:port with a in 224-239",
            EmptyElement => "empty element in a multiple-element format name",
            NotAllowedInMultiple => {
                "a multiple-element name may hold only direct, public, private, DL, connector \
                 and multicast names, and no journal, dead-letter, machine queue or subqueue"
            }
            TooManyElements => "too many elements in a multiple-element format name",
            TrailingText => "unexpected text after the end of the format name",
            BadUtf16 => "the wire string is not valid UTF-16",
            WireNameTooLong => "the direct name is too long for the 16-bit Count field",
            NoWireEncoding => "this kind of format name has no UserHeader queue encoding",
            WrongQueueManager => {
                "a private destination queue must be on the destination queue manager"
            }
            NoQueue => "the UserHeader holds no queue here",
            NeedsAdminQueue => "this encoding refers to the admin queue, which is missing",
        }
    }
}

/// A format name that could not be parsed or mapped: what is wrong and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FormatNameError {
    pub kind: FormatNameErrorKind,
    /// Character index in the text where the problem was found; `None` for errors that are not
    /// about text (mapping to or from a UserHeader).
    pub position: Option<usize>,
}

impl FormatNameError {
    fn at(kind: FormatNameErrorKind, position: usize) -> Self {
        FormatNameError {
            kind,
            position: Some(position),
        }
    }

    fn no_position(kind: FormatNameErrorKind) -> Self {
        FormatNameError {
            kind,
            position: None,
        }
    }

    /// Moves a position found inside a part of the input to its place in the whole input.
    fn shift(self, base: usize) -> Self {
        FormatNameError {
            kind: self.kind,
            position: self.position.map(|p| p.saturating_add(base)),
        }
    }

    /// Internally positions are byte offsets; users count characters, so convert once at the top.
    fn byte_to_char_position(self, input: &str) -> Self {
        let position = self.position.map(|p| match input.get(..p) {
            Some(head) => head.chars().count(),
            None => p,
        });
        FormatNameError {
            kind: self.kind,
            position,
        }
    }
}

impl fmt::Display for FormatNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "bad format name at position {}: {}",
                p,
                self.kind.describe()
            ),
            None => write!(f, "bad format name: {}", self.kind.describe()),
        }
    }
}

impl std::error::Error for FormatNameError {}

type Result<T> = std::result::Result<T, FormatNameError>;

use FormatNameErrorKind as K;

// ---------------------------------------------------------------------------------------------
// Validated names
// ---------------------------------------------------------------------------------------------

/// The QueueName character set of MS-MQMQ 2.1.1 (MSMQ 2.0 and later): `%x21 / %x23-2A /
/// %x2D-3A / %x3C-5B / %x5D-7F`, which leaves out space, `"`, `+`, `,`, `;` and `\`.
/// The ABNF stops at 0x7F, but Windows stores queue names as UTF-16 and creates queues with
/// non-ASCII names, so printable non-ASCII characters are accepted too: refusing a queue a
/// Windows peer can address would break interop, while accepting one costs nothing.
fn is_queue_name_char(c: char) -> bool {
    match c {
        '\u{21}' | '\u{23}'..='\u{2A}' | '\u{2D}'..='\u{3A}' | '\u{3C}'..='\u{5B}' => true,
        '\u{5D}'..='\u{7F}' => true,
        c => !c.is_ascii() && !c.is_control() && !c.is_whitespace(),
    }
}

/// Checks a name against a character rule and a length limit counted in UTF-16 code units
/// (the unit Windows counts in). Positions in the error are byte offsets into `s`.
fn check_name(
    s: &str,
    max_units: usize,
    allowed: fn(char) -> bool,
    kinds: [FormatNameErrorKind; 3],
) -> Result<()> {
    let [empty, too_long, bad_char] = kinds;
    if s.is_empty() {
        return Err(FormatNameError::at(empty, 0));
    }
    let mut units = 0usize;
    for (i, c) in s.char_indices() {
        if !allowed(c) {
            return Err(FormatNameError::at(bad_char, i));
        }
        units += c.len_utf16();
        if units > max_units {
            return Err(FormatNameError::at(too_long, i));
        }
    }
    Ok(())
}

fn lowercase_eq(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// A queue name (MS-MQMQ 2.1.1): 1-124 characters from the QueueName set, case kept as written.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    pub fn new(s: &str) -> Result<QueueName> {
        check_name(
            s,
            QUEUE_NAME_LEN_MAX,
            is_queue_name_char,
            [K::QueueNameEmpty, K::QueueNameTooLong, K::QueueNameBadChar],
        )?;
        // `private$` and `system$` would print as a different kind of name and so would not
        // parse back to the same value; `private$/x` would read as private queue `x` in an
        // HTTP name, where `/` is a separator.
        if s.eq_ignore_ascii_case("private$")
            || s.eq_ignore_ascii_case("system$")
            || starts_with_ci(s, "private$/")
        {
            return Err(FormatNameError::at(K::QueueNameReserved, 0));
        }
        Ok(QueueName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// MSMQ compares queue names without regard to case.
    pub fn eq_ignore_case(&self, other: &QueueName) -> bool {
        lowercase_eq(&self.0, &other.0)
    }

    /// The lowercase form, for use as a map key.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A subqueue name (MS-MQMQ 2.1.1, MSMQ 4.0 and later): 1-32 characters from the QueueName set.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubqueueName(String);

impl SubqueueName {
    pub fn new(s: &str) -> Result<SubqueueName> {
        check_name(
            s,
            SUBQUEUE_NAME_LEN_MAX,
            is_queue_name_char,
            [K::SubqueueEmpty, K::SubqueueTooLong, K::SubqueueBadChar],
        )?;
        // After a queue name, `;JOURNAL` is the journal suffix, so a subqueue with a suffix
        // keyword's name could not be written down unambiguously.
        if Keyword::parse(s).is_some() {
            return Err(FormatNameError::at(K::SubqueueReserved, 0));
        }
        Ok(SubqueueName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn eq_ignore_case(&self, other: &SubqueueName) -> bool {
        lowercase_eq(&self.0, &other.0)
    }
}

impl fmt::Display for SubqueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubqueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A computer name for `OS:` and `HTTP(S):` (MS-MQMQ 2.1.1 `Computer = 1*256(VCHAR)`).
///
/// VCHAR allows every visible ASCII character, but `\` ends the address, `/` ends an HTTP host,
/// `,` separates elements of a multiple-element name and `;` starts a suffix, so a host holding
/// one of them could never be read back; `"` is refused as in queue names. `:` would end an
/// HTTP host before its port, so it (and the brackets themselves) is only accepted in the
/// `[IPv6]` bracket form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn new(s: &str) -> Result<HostName> {
        fn host_char(c: char) -> bool {
            matches!(c, '\u{21}'..='\u{7E}')
                && !matches!(c, '\\' | '/' | ',' | ';' | '"' | ':' | '[' | ']')
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            // An IPv6 literal in brackets, as in a URL.
            let ok = !inner.is_empty()
                && s.len() <= COMPUTER_NAME_LEN_MAX
                && inner.parse::<std::net::Ipv6Addr>().is_ok();
            return if ok {
                Ok(HostName(s.to_owned()))
            } else {
                Err(FormatNameError::at(K::HostBadChar, 0))
            };
        }
        check_name(
            s,
            COMPUTER_NAME_LEN_MAX,
            host_char,
            [K::HostEmpty, K::HostTooLong, K::HostBadChar],
        )?;
        Ok(HostName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An IPX address: network number and node number (MS-MQMQ 2.1.2 table; TA_ADDRESS 2.2.4.2
/// gives them 4 and 6 bytes). Printed as `%08x:%012x`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct IpxAddress {
    network: u32,
    node: u64,
}

impl IpxAddress {
    pub const NODE_MAX: u64 = (1 << 48) - 1;

    /// `None` when `node` does not fit in 48 bits.
    pub fn new(network: u32, node: u64) -> Option<IpxAddress> {
        (node <= Self::NODE_MAX).then_some(IpxAddress { network, node })
    }

    pub fn network(&self) -> u32 {
        self.network
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    fn parse(s: &str) -> Option<IpxAddress> {
        let (net, node) = s.split_once(':')?;
        let hex = |t: &str, max: usize| {
            (!t.is_empty() && t.len() <= max && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(t, 16).ok())
                .flatten()
        };
        let network = u32::try_from(hex(net, 8)?).ok()?;
        IpxAddress::new(network, hex(node, 12)?)
    }
}

impl fmt::Display for IpxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}:{:012x}", self.network, self.node)
    }
}

/// The Active Directory domain of a DL name (MS-MQMQ 2.1.5 `1*255(VCHAR)`, without `,` because
/// that separates elements of a multiple-element name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    pub fn new(s: &str) -> Result<DomainName> {
        fn domain_char(c: char) -> bool {
            matches!(c, '\u{21}'..='\u{7E}') && c != ','
        }
        check_name(
            s,
            DOMAIN_NAME_LEN_MAX,
            domain_char,
            [K::BadDomain, K::BadDomain, K::BadDomain],
        )?;
        Ok(DomainName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A multicast address and port (MS-MQMQ 2.1.6): first octet 224-239.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MulticastAddress {
    address: Ipv4Addr,
    port: u16,
}

impl MulticastAddress {
    /// `None` unless the first octet is 224-239 (the `dec-octet1` rule).
    pub fn new(address: Ipv4Addr, port: u16) -> Option<MulticastAddress> {
        (224..=239)
            .contains(&address.octets()[0])
            .then_some(MulticastAddress { address, port })
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for MulticastAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

// ---------------------------------------------------------------------------------------------
// The format name model
// ---------------------------------------------------------------------------------------------

/// The transport of a direct format name (MS-MQMQ 2.1.2 `Protocol`).
///
/// `Spx` is not in the 2.1.2 ABNF, but MS-MQQB 3.1.7.17 builds `DIRECT=SPX:address\PRIVATE$\
/// order_queue$` for order acknowledgments to SPX peers, so a peer may send it; it takes an
/// IPX address like `Ipx`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Os,
    Http,
    Https,
    Ipx,
    Spx,
}

impl Protocol {
    /// The keyword as printed before the `:`.
    pub fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Os => "OS",
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Ipx => "IPX",
            Protocol::Spx => "SPX",
        }
    }

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

    /// HTTP and HTTPS names are sent with SRMP, never over MS-MQQB (MS-MQQB 3.1.7.12).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

/// The address part of a direct format name.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum DirectAddress {
    /// `TCP:` takes an IP address literal, never a host name.
    Tcp(IpAddr),
    /// `OS:` takes any computer name the operating system can resolve (`.` is the local one).
    Os(HostName),
    Ipx(IpxAddress),
    Spx(IpxAddress),
    /// `HTTP://host[:port]/msmq`; the port defaults to 80 when absent.
    Http {
        host: HostName,
        port: Option<u16>,
    },
    /// `HTTPS://host[:port]/msmq`; the port defaults to 443 when absent.
    Https {
        host: HostName,
        port: Option<u16>,
    },
}

impl DirectAddress {
    pub fn protocol(&self) -> Protocol {
        match self {
            DirectAddress::Tcp(_) => Protocol::Tcp,
            DirectAddress::Os(_) => Protocol::Os,
            DirectAddress::Ipx(_) => Protocol::Ipx,
            DirectAddress::Spx(_) => Protocol::Spx,
            DirectAddress::Http { .. } => Protocol::Http,
            DirectAddress::Https { .. } => Protocol::Https,
        }
    }

    /// The machine name or address, as MS-MQDMPR 3.1.7.1.26 (Get Queue Path) defines it: the
    /// `Host` for HTTP(S), the whole ProtocolAddressSpecification otherwise.
    pub fn host(&self) -> Cow<'_, str> {
        match self {
            DirectAddress::Tcp(ip) => Cow::Owned(ip.to_string()),
            DirectAddress::Os(h) => Cow::Borrowed(h.as_str()),
            DirectAddress::Ipx(a) | DirectAddress::Spx(a) => Cow::Owned(a.to_string()),
            DirectAddress::Http { host, .. } | DirectAddress::Https { host, .. } => {
                Cow::Borrowed(host.as_str())
            }
        }
    }

    /// The port written in an HTTP(S) name, if any.
    pub fn port(&self) -> Option<u16> {
        match self {
            DirectAddress::Http { port, .. } | DirectAddress::Https { port, .. } => *port,
            _ => None,
        }
    }
}

/// A suffix after a queue name inside a direct name.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum QueueSuffix {
    None,
    /// `;JOURNAL`: the queue's journal.
    Journal,
    /// `;name`: a subqueue (MSMQ 4.0 and later).
    Subqueue(SubqueueName),
}

/// The computer-wide system queues (`SYSTEM$;...` and `MACHINE=...;...`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum SystemQueue {
    /// The computer journal.
    Journal,
    /// The non-transactional dead-letter queue.
    DeadLetter,
    /// The transactional dead-letter queue.
    DeadXact,
}

impl SystemQueue {
    pub fn keyword(self) -> &'static str {
        match self {
            SystemQueue::Journal => "JOURNAL",
            SystemQueue::DeadLetter => "DEADLETTER",
            SystemQueue::DeadXact => "DEADXACT",
        }
    }

    pub fn suffix_type(self) -> QueueSuffixType {
        match self {
            SystemQueue::Journal => QueueSuffixType::Journal,
            SystemQueue::DeadLetter => QueueSuffixType::DeadLetter,
            SystemQueue::DeadXact => QueueSuffixType::DeadXact,
        }
    }
}

/// The queue part of a direct name, which is also the local queue path on the target host.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum QueuePath {
    /// `name[;suffix]`.
    Public {
        name: QueueName,
        suffix: QueueSuffix,
    },
    /// `PRIVATE$\name[;suffix]`.
    Private {
        name: QueueName,
        suffix: QueueSuffix,
    },
    /// `SYSTEM$;JOURNAL|DEADLETTER|DEADXACT`.
    System(SystemQueue),
}

impl QueuePath {
    pub fn name(&self) -> Option<&QueueName> {
        match self {
            QueuePath::Public { name, .. } | QueuePath::Private { name, .. } => Some(name),
            QueuePath::System(_) => None,
        }
    }

    pub fn suffix(&self) -> Option<&QueueSuffix> {
        match self {
            QueuePath::Public { suffix, .. } | QueuePath::Private { suffix, .. } => Some(suffix),
            QueuePath::System(_) => None,
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, QueuePath::Private { .. })
    }

    pub fn subqueue(&self) -> Option<&SubqueueName> {
        match self.suffix() {
            Some(QueueSuffix::Subqueue(s)) => Some(s),
            _ => None,
        }
    }

    /// Journals and dead-letter queues can be read but not sent to (MS-MQMQ 2.1.7).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            QueuePath::System(_)
                | QueuePath::Public {
                    suffix: QueueSuffix::Journal,
                    ..
                }
                | QueuePath::Private {
                    suffix: QueueSuffix::Journal,
                    ..
                }
        )
    }

    fn write(&self, f: &mut impl fmt::Write, sep: char) -> fmt::Result {
        let (name, suffix) = match self {
            QueuePath::System(kind) => return write!(f, "SYSTEM$;{}", kind.keyword()),
            QueuePath::Public { name, suffix } => (name, suffix),
            QueuePath::Private { name, suffix } => {
                write!(f, "PRIVATE${sep}")?;
                (name, suffix)
            }
        };
        f.write_str(name.as_str())?;
        match suffix {
            QueueSuffix::None => Ok(()),
            QueueSuffix::Journal => f.write_str(";JOURNAL"),
            QueueSuffix::Subqueue(s) => write!(f, ";{s}"),
        }
    }
}

/// A direct format name (MS-MQMQ 2.1.2): an address and the queue path on that host.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct DirectName {
    pub address: DirectAddress,
    pub queue: QueuePath,
}

impl DirectName {
    /// `DIRECT=TCP:address\PRIVATE$\order_queue$`, where order acknowledgments go on a direct
    /// session (MS-MQQB 3.1.7.17).
    pub fn order_queue(address: IpAddr) -> DirectName {
        DirectName {
            address: DirectAddress::Tcp(address),
            queue: QueuePath::Private {
                name: QueueName("order_queue$".to_owned()),
                suffix: QueueSuffix::None,
            },
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.address.protocol()
    }

    pub fn is_http(&self) -> bool {
        self.protocol().is_http()
    }

    /// See [`DirectAddress::host`].
    pub fn host(&self) -> Cow<'_, str> {
        self.address.host()
    }

    /// The name as it goes on the wire (UserHeader code 7, MQF FormatType 3): without `DIRECT=`.
    pub fn wire_string(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_body(&mut s);
        s
    }

    /// [`Self::wire_string`] as UTF-16LE with the terminating NUL, ready for a
    /// [`QueueRef::Direct`] or an MQFDirectQueueFormatName.
    pub fn wire_bytes(&self) -> Vec<u8> {
        utf16z(&self.wire_string())
    }

    /// Parses a direct name without its `DIRECT=` prefix, as found on the wire
    /// (`OS:a04bm02\q`, `TCP:192.0.2.10\PRIVATE$\order_queue$`, `HTTP://host/msmq/private$/q`).
    pub fn parse_wire(s: &str) -> Result<DirectName> {
        parse_direct_body(s, 0).map_err(|e| e.byte_to_char_position(s))
    }

    /// Decodes and parses the UTF-16LE string of a UserHeader code 7 queue. Reads up to the
    /// first NUL; a missing NUL is tolerated, unpaired surrogates are an error.
    pub fn from_utf16(u: Utf16<'_>) -> Result<DirectName> {
        if u.byte_len() % 2 != 0 {
            return Err(FormatNameError::no_position(K::BadUtf16));
        }
        let mut s = String::new();
        for r in char::decode_utf16(u.units().take_while(|&c| c != 0)) {
            match r {
                Ok(c) => s.push(c),
                Err(_) => return Err(FormatNameError::no_position(K::BadUtf16)),
            }
        }
        DirectName::parse_wire(&s)
    }

    /// The queue path name (MS-MQMQ 2.1.1), built as MS-MQDMPR 3.1.7.1.26 does: the machine
    /// name followed by the queue part, e.g. `host\PRIVATE$\orders`. Backslashes are used even
    /// for HTTP names, because that is the path-name grammar.
    pub fn path_name(&self) -> String {
        let mut s = String::from(self.host());
        s.push('\\');
        let _ = self.queue.write(&mut s, '\\');
        s
    }

    fn write_body(&self, f: &mut impl fmt::Write) -> fmt::Result {
        let sep = match &self.address {
            DirectAddress::Tcp(ip) => {
                write!(f, "TCP:{ip}\\")?;
                '\\'
            }
            DirectAddress::Os(h) => {
                write!(f, "OS:{h}\\")?;
                '\\'
            }
            DirectAddress::Ipx(a) => {
                write!(f, "IPX:{a}\\")?;
                '\\'
            }
            DirectAddress::Spx(a) => {
                write!(f, "SPX:{a}\\")?;
                '\\'
            }
            DirectAddress::Http { host, port } | DirectAddress::Https { host, port } => {
                write!(f, "{}://{host}", self.protocol().keyword())?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                f.write_str("/msmq/")?;
                '/'
            }
        };
        self.queue.write(f, sep)
    }
}

impl fmt::Display for DirectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DIRECT=")?;
        self.write_body(f)
    }
}

/// The elements of a multiple-element format name (MS-MQMQ 2.1.7): at least two, none of them
/// itself multiple, machine, or read-only.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MultipleElements(Vec<FormatName>);

impl MultipleElements {
    /// Checks the 2.1.7 rules. With fewer than two elements the name is not "multiple" (one
    /// element prints as a plain name), so that is refused to keep printing and parsing inverse.
    pub fn new(elements: Vec<FormatName>) -> Result<MultipleElements> {
        if elements.len() < 2 {
            return Err(FormatNameError::no_position(K::EmptyElement));
        }
        if elements.len() > MULTIPLE_ELEMENTS_MAX {
            return Err(FormatNameError::no_position(K::TooManyElements));
        }
        if !elements.iter().all(FormatName::allowed_in_multiple) {
            return Err(FormatNameError::no_position(K::NotAllowedInMultiple));
        }
        Ok(MultipleElements(elements))
    }

    pub fn elements(&self) -> &[FormatName] {
        &self.0
    }
}

/// A queue format name (MS-MQMQ 2.1.2-2.1.7).
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum FormatName {
    /// `DIRECT=...` (2.1.2).
    Direct(DirectName),
    /// `PUBLIC=guid[;JOURNAL]`. The 2.1.3 ABNF has no suffix, but QUEUE_FORMAT (2.2.7) allows
    /// JOURNAL on public names and DIGEST §8.2 lists it; we accept it, as Windows does.
    Public { queue: Guid, journal: bool },
    /// `PRIVATE=qm-guid\hex-id[;JOURNAL]` (2.1.4).
    Private { qm: Guid, id: u32, journal: bool },
    /// `MACHINE=qm-guid;JOURNAL|DEADLETTER|DEADXACT`. The 2.1.6 ABNF shows no suffix, but
    /// QUEUE_FORMAT (2.2.7) forbids a machine name without one (SUFFIX_TYPE_NONE must not be
    /// used with type 4), so the suffix is required here, as DIGEST §8.2 also says.
    Machine { qm: Guid, queue: SystemQueue },
    /// `CONNECTOR=guid[;XACTONLY]` (2.1.6, 2.2.11).
    Connector { id: Guid, xact_only: bool },
    /// `DL=guid[@domain]` (2.1.5).
    DistributionList {
        id: Guid,
        domain: Option<DomainName>,
    },
    /// `MULTICAST=a.b.c.d:port` (2.1.6).
    Multicast(MulticastAddress),
    /// Elements separated by commas (2.1.7).
    Multiple(MultipleElements),
}

/// QUEUE_FORMAT_TYPE (MS-MQMQ 2.2.6). It is an RPC value, not part of the MS-MQQB encoding, but
/// the admin API and MS-MQDMPR reasoning use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum QueueFormatType {
    Unknown = 0,
    Public = 1,
    Private = 2,
    Direct = 3,
    Machine = 4,
    Connector = 5,
    DistributionList = 6,
    Multicast = 7,
    Subqueue = 8,
}

/// QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum QueueSuffixType {
    None = 0,
    Journal = 1,
    DeadLetter = 2,
    DeadXact = 3,
    XactOnly = 4,
    Subqueue = 5,
}

/// MQFFormatNameElement.FormatType values (MS-MQMQ 2.2.18.1.4).
pub mod mqf_format_type {
    pub const PUBLIC: u16 = 0x0001;
    pub const PRIVATE: u16 = 0x0002;
    pub const DIRECT: u16 = 0x0003;
    pub const DISTRIBUTION_LIST: u16 = 0x0006;
}

/// Which UserHeader field a queue goes in; each allows different encodings (MS-MQMQ 2.2.19.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum QueueRole {
    /// DQ: codes 0, 3, 5, 7.
    Destination,
    /// AQ: codes 0, 2, 3, 5, 6, 7.
    Admin,
    /// RQ: codes 0-7.
    Response,
}

/// What the UserHeader around a queue reference says: the GUIDs that codes 2, 3, 4 and 6 are
/// relative to, and the admin queue that codes 1 and 4 refer to.
#[derive(Clone, Copy, Debug)]
pub struct WireContext<'f> {
    /// UserHeader.SourceQueueManager.
    pub source_qm: Guid,
    /// UserHeader.QueueManagerAddress (GUID_NULL for direct destinations).
    pub destination_qm: Guid,
    /// The admin queue of the same message, when there is one.
    pub admin: Option<&'f FormatName>,
}

impl FormatName {
    /// Parses any format name, including multiple-element names. Never panics.
    pub fn parse(s: &str) -> Result<FormatName> {
        parse_format_name(s).map_err(|e| e.byte_to_char_position(s))
    }

    /// The elements of a multiple-element name, or this name alone.
    pub fn elements(&self) -> &[FormatName] {
        match self {
            FormatName::Multiple(m) => m.elements(),
            other => std::slice::from_ref(other),
        }
    }

    pub fn as_direct(&self) -> Option<&DirectName> {
        match self {
            FormatName::Direct(d) => Some(d),
            _ => None,
        }
    }

    /// True when every element is an HTTP or HTTPS direct name: in hardened mode only those may
    /// leave the machine (MS-MQDMPR 3.1.7.1.5 locks outgoing queues with non-HTTP names).
    pub fn is_http(&self) -> bool {
        self.elements()
            .iter()
            .all(|e| e.as_direct().is_some_and(DirectName::is_http))
    }

    /// A private queue: `PRIVATE=` or a direct name with `PRIVATE$\`.
    pub fn is_private(&self) -> bool {
        match self {
            FormatName::Private { .. } => true,
            FormatName::Direct(d) => d.queue.is_private(),
            _ => false,
        }
    }

    /// Journals, dead-letter queues and machine queues can be read but not sent to.
    pub fn is_read_only(&self) -> bool {
        match self {
            FormatName::Direct(d) => d.queue.is_read_only(),
            FormatName::Public { journal, .. } | FormatName::Private { journal, .. } => *journal,
            FormatName::Machine { .. } => true,
            _ => false,
        }
    }

    /// The queue name, for the kinds that spell it out (direct names).
    pub fn queue_name(&self) -> Option<&QueueName> {
        self.as_direct().and_then(|d| d.queue.name())
    }

    /// The path name `host\PRIVATE$\name` for a direct name; other kinds need a directory.
    pub fn path_name(&self) -> Option<String> {
        self.as_direct().map(DirectName::path_name)
    }

    /// QUEUE_FORMAT_TYPE of a single name; `None` for a multiple-element name, which is a list
    /// of QUEUE_FORMATs rather than one.
    pub fn format_type(&self) -> Option<QueueFormatType> {
        Some(match self {
            FormatName::Direct(d) if d.queue.subqueue().is_some() => QueueFormatType::Subqueue,
            FormatName::Direct(_) => QueueFormatType::Direct,
            FormatName::Public { .. } => QueueFormatType::Public,
            FormatName::Private { .. } => QueueFormatType::Private,
            FormatName::Machine { .. } => QueueFormatType::Machine,
            FormatName::Connector { .. } => QueueFormatType::Connector,
            FormatName::DistributionList { .. } => QueueFormatType::DistributionList,
            FormatName::Multicast(_) => QueueFormatType::Multicast,
            FormatName::Multiple(_) => return None,
        })
    }

    /// QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11) of a single name.
    pub fn suffix_type(&self) -> QueueSuffixType {
        match self {
            FormatName::Direct(d) => match &d.queue {
                QueuePath::System(kind) => kind.suffix_type(),
                QueuePath::Public { suffix, .. } | QueuePath::Private { suffix, .. } => {
                    match suffix {
                        QueueSuffix::None => QueueSuffixType::None,
                        QueueSuffix::Journal => QueueSuffixType::Journal,
                        QueueSuffix::Subqueue(_) => QueueSuffixType::Subqueue,
                    }
                }
            },
            FormatName::Public { journal: true, .. }
            | FormatName::Private { journal: true, .. } => QueueSuffixType::Journal,
            FormatName::Machine { queue, .. } => queue.suffix_type(),
            FormatName::Connector {
                xact_only: true, ..
            } => QueueSuffixType::XactOnly,
            _ => QueueSuffixType::None,
        }
    }

    /// MQFFormatNameElement.FormatType (MS-MQMQ 2.2.18.1.4) for an element of a
    /// MultiQueueFormatHeader list, or `None` for kinds that list cannot carry.
    pub fn mqf_format_type(&self) -> Option<u16> {
        match self {
            FormatName::Public { journal: false, .. } => Some(mqf_format_type::PUBLIC),
            FormatName::Private { journal: false, .. } => Some(mqf_format_type::PRIVATE),
            FormatName::Direct(_) => Some(mqf_format_type::DIRECT),
            FormatName::DistributionList { .. } => Some(mqf_format_type::DISTRIBUTION_LIST),
            _ => None,
        }
    }

    /// The key MSMQ compares format names by: the canonical text, lowercased. MS-MQDMPR
    /// 3.1.7.3.8 compares format names case-insensitively when it removes duplicates.
    pub fn normalized_key(&self) -> String {
        self.to_string().to_lowercase()
    }

    /// Equality as MSMQ sees it: keywords, hosts and queue names compared without case.
    pub fn eq_ignore_case(&self, other: &FormatName) -> bool {
        lowercase_eq(&self.to_string(), &other.to_string())
    }

    /// For a direct name, the UTF-16LE bytes (with NUL) of the name without `DIRECT=`, as a
    /// UserHeader code 7 queue or an MQF direct element carries them.
    pub fn direct_wire_string(&self) -> Option<Vec<u8>> {
        self.as_direct().map(DirectName::wire_bytes)
    }

    /// The UserHeader.QueueManagerAddress this name needs as a destination (MS-MQMQ 2.2.19.2):
    /// GUID_NULL for a direct name, the hosting QM for a private name. `None` when it takes a
    /// directory to know (public names) or the name cannot be a destination.
    pub fn queue_manager_address(&self) -> Option<Guid> {
        match self {
            FormatName::Direct(_) => Some(Guid::NULL),
            FormatName::Private { qm, .. } => Some(*qm),
            _ => None,
        }
    }

    /// Encodes this name as the UserHeader queue reference for `role` (MS-MQMQ 2.2.19.2,
    /// DIGEST §5.3). A direct name's UTF-16 string is written into `scratch`, which the
    /// returned reference borrows.
    ///
    /// Private names pick the shortest encoding the header allows: on the source QM (code 2,
    /// AQ/RQ), on the destination QM (code 3), on the admin queue's QM (code 4, RQ only), else
    /// the full GUID (code 6, AQ/RQ). The source is tried first, which is what an admin queue
    /// on the sending machine (the usual case) needs. A response queue equal to the admin queue
    /// is code 1.
    pub fn to_queue_ref<'a>(
        &self,
        role: QueueRole,
        ctx: &WireContext<'_>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<QueueRef<'a>> {
        if role == QueueRole::Response && ctx.admin.is_some_and(|a| a.eq_ignore_case(self)) {
            return Ok(QueueRef::SameAsAdmin);
        }
        match self {
            FormatName::Direct(d) => {
                scratch.clear();
                scratch.extend_from_slice(&d.wire_bytes());
                if scratch.len() > usize::from(u16::MAX) {
                    return Err(FormatNameError::no_position(K::WireNameTooLong));
                }
                Ok(QueueRef::Direct(Utf16(scratch.as_slice())))
            }
            FormatName::Public {
                queue,
                journal: false,
            } => Ok(QueueRef::Public(*queue)),
            FormatName::Private {
                qm,
                id,
                journal: false,
            } => {
                let (qm, id) = (*qm, *id);
                match role {
                    QueueRole::Destination if qm == ctx.destination_qm => {
                        Ok(QueueRef::DestinationPrivate(id))
                    }
                    QueueRole::Destination => {
                        Err(FormatNameError::no_position(K::WrongQueueManager))
                    }
                    _ if qm == ctx.source_qm => Ok(QueueRef::SourcePrivate(id)),
                    _ if qm == ctx.destination_qm => Ok(QueueRef::DestinationPrivate(id)),
                    QueueRole::Response if matches!(ctx.admin, Some(FormatName::Private { qm: a, .. }) if *a == qm) => {
                        Ok(QueueRef::AdminHostPrivate(id))
                    }
                    _ => Ok(QueueRef::Private { qm, id }),
                }
            }
            _ => Err(FormatNameError::no_position(K::NoWireEncoding)),
        }
    }

    /// Decodes a UserHeader queue reference (MS-MQMQ 2.2.19.2) into a format name, resolving the
    /// relative codes with the header's GUIDs: 2 against `source_qm`, 3 against `destination_qm`
    /// (UserHeader.QueueManagerAddress; it is GUID_NULL when the destination was direct, and
    /// then the result names the null QM, which the caller reads as "this QM"), 4 against the
    /// admin queue's QM, and 1 is the admin queue itself. Never panics on hostile input.
    pub fn from_queue_ref(
        q: &QueueRef<'_>,
        source_qm: Guid,
        destination_qm: Guid,
        admin: Option<&FormatName>,
    ) -> Result<FormatName> {
        let private = |qm, id| FormatName::Private {
            qm,
            id,
            journal: false,
        };
        match *q {
            QueueRef::None => Err(FormatNameError::no_position(K::NoQueue)),
            QueueRef::SameAsAdmin => admin
                .cloned()
                .ok_or(FormatNameError::no_position(K::NeedsAdminQueue)),
            QueueRef::SourcePrivate(id) => Ok(private(source_qm, id)),
            QueueRef::DestinationPrivate(id) => Ok(private(destination_qm, id)),
            QueueRef::AdminHostPrivate(id) => match admin {
                Some(FormatName::Private { qm, .. }) => Ok(private(*qm, id)),
                _ => Err(FormatNameError::no_position(K::NeedsAdminQueue)),
            },
            QueueRef::Public(queue) => Ok(FormatName::Public {
                queue,
                journal: false,
            }),
            QueueRef::Private { qm, id } => Ok(private(qm, id)),
            QueueRef::Direct(u) => DirectName::from_utf16(u).map(FormatName::Direct),
        }
    }

    fn allowed_in_multiple(&self) -> bool {
        match self {
            FormatName::Direct(d) => !d.queue.is_read_only() && d.queue.subqueue().is_none(),
            FormatName::Public { journal, .. } | FormatName::Private { journal, .. } => !journal,
            FormatName::Connector { .. }
            | FormatName::DistributionList { .. }
            | FormatName::Multicast(_) => true,
            FormatName::Machine { .. } | FormatName::Multiple(_) => false,
        }
    }
}

impl FromStr for FormatName {
    type Err = FormatNameError;

    fn from_str(s: &str) -> Result<FormatName> {
        FormatName::parse(s)
    }
}

/// Writes a GUID as the 2.1.3 `Guid` rule spells it: lowercase, hyphens, no braces.
struct GuidText(Guid);

impl fmt::Display for GuidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.to_uuid().hyphenated(), f)
    }
}

impl fmt::Display for FormatName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let journal = |f: &mut fmt::Formatter<'_>, on: bool| {
            if on {
                f.write_str(";JOURNAL")
            } else {
                Ok(())
            }
        };
        match self {
            FormatName::Direct(d) => fmt::Display::fmt(d, f),
            FormatName::Public { queue, journal: j } => {
                write!(f, "PUBLIC={}", GuidText(*queue))?;
                journal(f, *j)
            }
            FormatName::Private { qm, id, journal: j } => {
                write!(f, "PRIVATE={}\\{:08x}", GuidText(*qm), id)?;
                journal(f, *j)
            }
            FormatName::Machine { qm, queue } => {
                write!(f, "MACHINE={};{}", GuidText(*qm), queue.keyword())
            }
            FormatName::Connector { id, xact_only } => {
                write!(f, "CONNECTOR={}", GuidText(*id))?;
                if *xact_only {
                    f.write_str(";XACTONLY")?;
                }
                Ok(())
            }
            FormatName::DistributionList { id, domain } => {
                write!(f, "DL={}", GuidText(*id))?;
                if let Some(d) = domain {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            FormatName::Multicast(m) => write!(f, "MULTICAST={m}"),
            FormatName::Multiple(m) => {
                for (i, e) in m.elements().iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    fmt::Display::fmt(e, f)?;
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parser. Positions are byte offsets into the whole input until the public entry points turn
// them into character positions. Every slice is taken at an ASCII delimiter found by `find`, or
// with `get`, so no index can fall inside a character or past the end.
// ---------------------------------------------------------------------------------------------

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// The suffix keywords of QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11) that are written as text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Keyword {
    Journal,
    DeadLetter,
    DeadXact,
    XactOnly,
}

impl Keyword {
    fn parse(s: &str) -> Option<Keyword> {
        [
            ("JOURNAL", Keyword::Journal),
            ("DEADLETTER", Keyword::DeadLetter),
            ("DEADXACT", Keyword::DeadXact),
            ("XACTONLY", Keyword::XactOnly),
        ]
        .into_iter()
        .find(|(k, _)| s.eq_ignore_ascii_case(k))
        .map(|(_, v)| v)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn qm() -> Guid {
        Guid::parse_text("557358d1-9150-9595-4997-b6e611ea26c6").unwrap()
    }

    fn other_qm() -> Guid {
        Guid::parse_text("0f0e0d0c-0b0a-0908-0706-050403020100").unwrap()
    }

    fn parse(s: &str) -> FormatName {
        FormatName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> FormatNameError {
        match FormatName::parse(s) {
            Ok(v) => panic!("{s} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn direct_os_public_matches_frame_7() {
        let f = parse(r"DIRECT=OS:a04bm02\q");
        let d = f.as_direct().unwrap();
        assert_eq!(d.protocol(), Protocol::Os);
        assert_eq!(d.host(), "a04bm02");
        assert_eq!(d.queue.name().unwrap().as_str(), "q");
        assert!(!f.is_private());
        let wire = f.direct_wire_string().unwrap();
        assert_eq!(wire.len(), 0x1A);
        assert_eq!(wire, utf16z(r"OS:a04bm02\q"));
        assert_eq!(f.to_string(), r"DIRECT=OS:a04bm02\q");
    }

    #[test]
    fn keywords_ignore_case_but_names_keep_it() {
        let f = parse(r"direct=tcp:192.0.2.20\private$\Orders;JOURNAL");
        assert_eq!(
            f.to_string(),
            r"DIRECT=TCP:192.0.2.20\PRIVATE$\Orders;JOURNAL"
        );
        assert!(f.eq_ignore_case(&parse(r"DIRECT=TCP:192.0.2.20\PRIVATE$\orders;journal")));
        assert_ne!(f, parse(r"DIRECT=TCP:192.0.2.20\PRIVATE$\orders;journal"));
    }

    #[test]
    fn error_positions_count_characters() {
        let e = err(r"DIRECT=OS:host\qé é");
        assert_eq!(e.kind, K::QueueNameBadChar);
        assert_eq!(e.position, Some(17));
        assert!(e.to_string().contains("position 17"));
    }

    #[test]
    fn private_maps_to_destination_code_3() {
        let f = parse("PRIVATE=557358d1-9150-9595-4997-b6e611ea26c6\\00000004");
        let ctx = WireContext {
            source_qm: other_qm(),
            destination_qm: qm(),
            admin: None,
        };
        let mut scratch = Vec::new();
        let q = f
            .to_queue_ref(QueueRole::Destination, &ctx, &mut scratch)
            .unwrap();
        assert_eq!(q, QueueRef::DestinationPrivate(4));
        assert_eq!(f.queue_manager_address(), Some(qm()));
    }

    #[test]
    fn guid_shape_is_strict() {
        assert_eq!(
            err("PUBLIC= 57358d1-9150-9595-4997-b6e611ea26c6").kind,
            K::BadGuid
        );
        assert_eq!(
            err("PUBLIC=557358d19150-9595-4997-b6e611ea26c6ab").kind,
            K::BadGuid
        );
        assert_eq!(
            err("PUBLIC={557358d1-9150-9595-4997-b6e611ea26c6").kind,
            K::BadGuid
        );
        assert_eq!(
            err("PUBLIC=557358d1-9150-9595-4997-b6e611ea26c").kind,
            K::BadGuid
        );
        assert!(FormatName::parse("PUBLIC={557358D1-9150-9595-4997-B6E611EA26C6}").is_ok());
    }
}
