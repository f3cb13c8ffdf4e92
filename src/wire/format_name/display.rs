//! The canonical text of a format name (MS-MQMQ 2.1): keywords in the spelling of the ABNF,
//! GUIDs in the 2.1.3 form, private queue numbers as 8 hex digits, and the path name of a
//! direct name (MS-MQDMPR 3.1.7.1.26). What is printed here parses back to the same value.

use std::fmt;

use super::{DirectAddress, DirectName, FormatName, QueuePath, QueueSuffix};
use crate::wire::Guid;

impl QueuePath {
    pub(super) fn write(&self, f: &mut impl fmt::Write, sep: char) -> fmt::Result {
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

impl DirectName {
    /// The name as it goes on the wire (UserHeader code 7, MQF FormatType 3): without `DIRECT=`.
    pub fn wire_string(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_body(&mut s);
        s
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

impl FormatName {
    /// The path name `host\PRIVATE$\name` for a direct name; other kinds need a directory.
    pub fn path_name(&self) -> Option<String> {
        self.as_direct().map(DirectName::path_name)
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
