//! Why a format name was refused: [`FormatNameErrorKind`] says what, [`FormatNameError`] adds
//! where (a character position in the text, or none when the problem is in a mapping to or from
//! a UserHeader queue encoding).

use std::fmt;

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
    pub(super) fn at(kind: FormatNameErrorKind, position: usize) -> Self {
        FormatNameError {
            kind,
            position: Some(position),
        }
    }

    pub(super) fn no_position(kind: FormatNameErrorKind) -> Self {
        FormatNameError {
            kind,
            position: None,
        }
    }

    /// Moves a position found inside a part of the input to its place in the whole input.
    pub(super) fn shift(self, base: usize) -> Self {
        FormatNameError {
            kind: self.kind,
            position: self.position.map(|p| p.saturating_add(base)),
        }
    }

    /// Internally positions are byte offsets; users count characters, so convert once at the top.
    pub(super) fn byte_to_char_position(self, input: &str) -> Self {
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

pub(super) type Result<T> = std::result::Result<T, FormatNameError>;
