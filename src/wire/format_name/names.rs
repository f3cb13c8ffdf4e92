//! The parts a format name is made of (MS-MQMQ 2.1.1, 2.1.2, 2.1.5, 2.1.6): queue, subqueue,
//! host and domain names with the character rules and length limits of the ABNF, IPX and
//! multicast addresses, and the suffix keywords. Each type is validated when it is made.
//! The length limits of format names are here too (re-exported by the module).

use std::fmt;
use std::net::Ipv4Addr;

use super::error::{FormatNameError, FormatNameErrorKind as K, Result};

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
fn check_name(s: &str, max_units: usize, allowed: fn(char) -> bool, kinds: [K; 3]) -> Result<()> {
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

pub(super) fn lowercase_eq(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

pub(super) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// The suffix keywords of QUEUE_SUFFIX_TYPE (MS-MQMQ 2.2.11) that are written as text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Keyword {
    Journal,
    DeadLetter,
    DeadXact,
    XactOnly,
}

impl Keyword {
    pub(super) fn parse(s: &str) -> Option<Keyword> {
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
}

/// A queue name (MS-MQMQ 2.1.1): 1-124 characters from the QueueName set, case kept as written.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(pub(super) String);

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

    pub(super) fn parse(s: &str) -> Option<IpxAddress> {
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
