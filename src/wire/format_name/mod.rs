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
//!
//! The module holds the model (the types below); its parts are in files of their own:
//! `names` (the validated parts of a name: queue, host and domain names, IPX and multicast
//! addresses, and every length limit of a format name), `grammar` (parsing text), `display`
//! (canonical text), `wire` (the binary encodings: UserHeader queue references, QUEUE_FORMAT
//! types, MQF element types) and `error`. Callers name every type through this module
//! (`wire::format_name::X`).

mod display;
mod error;
mod grammar;
mod names;
mod wire;

use std::borrow::Cow;
use std::net::IpAddr;

pub use error::{FormatNameError, FormatNameErrorKind};
pub use names::{
    DomainName, HostName, IpxAddress, MulticastAddress, QueueName, SubqueueName,
    COMPUTER_NAME_LEN_MAX, DOMAIN_NAME_LEN_MAX, MULTIPLE_ELEMENTS_MAX, QUEUE_NAME_LEN_MAX,
    SUBQUEUE_NAME_LEN_MAX,
};
pub use wire::{mqf_format_type, QueueFormatType, QueueRole, QueueSuffixType, WireContext};

use super::Guid;
use error::{FormatNameErrorKind as K, Result};
use names::lowercase_eq;

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

impl FormatName {
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

    /// The key MSMQ compares format names by: the canonical text, lowercased. MS-MQDMPR
    /// 3.1.7.3.8 compares format names case-insensitively when it removes duplicates.
    pub fn normalized_key(&self) -> String {
        self.to_string().to_lowercase()
    }

    /// Equality as MSMQ sees it: keywords, hosts and queue names compared without case.
    pub fn eq_ignore_case(&self, other: &FormatName) -> bool {
        lowercase_eq(&self.to_string(), &other.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::utf16z;

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
