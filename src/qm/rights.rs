//! Queue rights: who may do what to a queue, and the check an arriving message passes at its
//! target (MS-MQQB 3.1.5.8.3). Pure: no IO, no clock (the caller passes the time).
//!
//! The model is MSMQ's: a queue's access list grants rights (the `MQSEC_*` access mask of
//! MS-MQMQ 2.2.24) to principals, allow entries only; a principal is a Windows SID string
//! (`S-1-5-21-...`), `Everyone` (S-1-1-0), `Anonymous` (ANONYMOUS LOGON, S-1-5-7) or a named
//! lior user (`user:NAME`, an API or AMQP user). A queue may also require authentication
//! (MSMQ's Authenticate property, PROPID_Q_AUTHENTICATE).
//!
//! Who sent an arriving message (the token the rights are looked up for):
//! - a SID in the SecurityHeader (ST = 1) of an **authenticated** message: that SID and Everyone;
//! - a SID that is not authenticated: Everyone only. Anybody can write any SID into a packet,
//!   so a grant to a SID admits only messages whose signature was verified. Until lior
//!   verifies signatures (issue 13 item 2) no message is authenticated: the caller passes
//!   `authenticated = false`, a grant to a SID admits nothing and grants to Everyone pass;
//! - a queue-manager GUID (ST = 2): Everyone, as Windows does (MS-MQQB 3.1.5.8.3);
//! - no SecurityHeader, or no sender id (ST = 0): Anonymous only (Everyone does not include
//!   ANONYMOUS LOGON on Windows since XP SP2 / Server 2003).
//!
//! Default access list of a new queue (MS-MQDMPR 3.1.7.1.3.1 and the product's private-queue
//! defaults): Everyone may send, get properties and get permissions; and, because every lior
//! queue can be reached over SRMP, MQSEC_WRITE_MESSAGE for Everyone and Anonymous as MS-MQDMPR
//! says a queue reachable over SRMP SHOULD have ("AnonymousAccess SHOULD be set to
//! MQSEC_WRITE_MESSAGE"). Queues made through the local API have no owner entry: the local API
//! (loopback only) is the administrator's door and holds every right.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::headers::MessageClass;
use crate::wire::Guid;

/// Entries one queue's access list holds (grants to distinct principals).
pub const RIGHTS_ENTRIES_MAX: usize = 64;
/// Peers (source queue managers) whose last refusal log time is remembered; when full, the
/// table starts over (a flood of forged GUIDs then logs at most this many lines per interval).
pub const REFUSAL_LOG_PEERS_MAX: usize = 1024;
/// Seconds between two refusal log lines for the same peer.
pub const REFUSAL_LOG_INTERVAL_S: u64 = 60;
/// Longest `user:NAME` name (as the AMQP user names).
pub const USER_NAME_BYTES_MAX: usize = 255;

/// An MSMQ access mask (MS-MQMQ 2.2.24 MQQUEUEACCESSMASK).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rights(pub u32);

impl Rights {
    pub const DELETE_MESSAGE: Rights = Rights(0x0000_0001);
    pub const PEEK_MESSAGE: Rights = Rights(0x0000_0002);
    pub const WRITE_MESSAGE: Rights = Rights(0x0000_0004);
    pub const DELETE_JOURNAL_MESSAGE: Rights = Rights(0x0000_0008);
    pub const SET_QUEUE_PROPERTIES: Rights = Rights(0x0000_0010);
    pub const GET_QUEUE_PROPERTIES: Rights = Rights(0x0000_0020);
    pub const DELETE_QUEUE: Rights = Rights(0x0001_0000);
    pub const GET_QUEUE_PERMISSIONS: Rights = Rights(0x0002_0000);
    pub const CHANGE_QUEUE_PERMISSIONS: Rights = Rights(0x0004_0000);
    pub const TAKE_QUEUE_OWNERSHIP: Rights = Rights(0x0008_0000);
    pub const RECEIVE_MESSAGE: Rights = Rights(0x3);
    pub const RECEIVE_JOURNAL_MESSAGE: Rights = Rights(0xA);
    pub const GENERIC_WRITE: Rights = Rights(0x0002_0024);
    pub const GENERIC_READ: Rights = Rights(0x0002_002B);
    pub const GENERIC_ALL: Rights = Rights(0x000F_003F);
    pub const NONE: Rights = Rights(0);

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    pub fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// Parses one right's name: lior's short name (`send`, `receive`, ...) or MSMQ's
    /// (`MQSEC_WRITE_MESSAGE`), without case.
    pub fn parse_one(name: &str) -> Result<Rights, String> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        let n = n.strip_prefix("mqsec-").unwrap_or(&n);
        RIGHT_NAMES
            .iter()
            .find(|(short, mqsec, _)| *short == n || mqsec.eq_ignore_ascii_case(name.trim()))
            .map(|&(_, _, r)| r)
            .or(match n {
                "write-message" => Some(Rights::WRITE_MESSAGE),
                "receive-message" => Some(Rights::RECEIVE_MESSAGE),
                "peek-message" => Some(Rights::PEEK_MESSAGE),
                "delete-queue" => Some(Rights::DELETE_QUEUE),
                "get-queue-properties" => Some(Rights::GET_QUEUE_PROPERTIES),
                "set-queue-properties" => Some(Rights::SET_QUEUE_PROPERTIES),
                "get-queue-permissions" => Some(Rights::GET_QUEUE_PERMISSIONS),
                "change-queue-permissions" => Some(Rights::CHANGE_QUEUE_PERMISSIONS),
                "take-queue-ownership" => Some(Rights::TAKE_QUEUE_OWNERSHIP),
                "queue-generic-all" => Some(Rights::GENERIC_ALL),
                "queue-generic-read" => Some(Rights::GENERIC_READ),
                "queue-generic-write" => Some(Rights::GENERIC_WRITE),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "unknown right {name:?}; rights are {} (or MSMQ's MQSEC_* names)",
                    RIGHT_NAMES
                        .iter()
                        .map(|r| r.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Parses a list of names into one mask (at least one name).
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Rights, String> {
        if names.is_empty() {
            return Err("name at least one right (send, receive, peek, ...)".into());
        }
        names.iter().try_fold(Rights::NONE, |acc, n| {
            Ok(acc.union(Rights::parse_one(n.as_ref())?))
        })
    }

    /// The names of this mask, largest groups first (`full`, then `receive` for both of its
    /// bits, ...); every bit is named once.
    pub fn names(self) -> Vec<&'static str> {
        let mut left = self;
        let mut out = Vec::new();
        for &(short, _, r) in DISPLAY_ORDER {
            if !r.is_empty() && left.contains(r) {
                out.push(short);
                left = left.without(r);
            }
        }
        if !left.is_empty() {
            // Bits MS-MQMQ does not name (a hand-edited catalog): shown, not lost.
            out.push("other");
        }
        out
    }
}

/// lior's short name, MSMQ's name, the mask.
const RIGHT_NAMES: &[(&str, &str, Rights)] = &[
    ("send", "MQSEC_WRITE_MESSAGE", Rights::WRITE_MESSAGE),
    ("receive", "MQSEC_RECEIVE_MESSAGE", Rights::RECEIVE_MESSAGE),
    ("peek", "MQSEC_PEEK_MESSAGE", Rights::PEEK_MESSAGE),
    (
        "delete-message",
        "MQSEC_DELETE_MESSAGE",
        Rights::DELETE_MESSAGE,
    ),
    (
        "receive-journal",
        "MQSEC_RECEIVE_JOURNAL_MESSAGE",
        Rights::RECEIVE_JOURNAL_MESSAGE,
    ),
    (
        "delete-journal-message",
        "MQSEC_DELETE_JOURNAL_MESSAGE",
        Rights::DELETE_JOURNAL_MESSAGE,
    ),
    (
        "get-properties",
        "MQSEC_GET_QUEUE_PROPERTIES",
        Rights::GET_QUEUE_PROPERTIES,
    ),
    (
        "set-properties",
        "MQSEC_SET_QUEUE_PROPERTIES",
        Rights::SET_QUEUE_PROPERTIES,
    ),
    (
        "get-permissions",
        "MQSEC_GET_QUEUE_PERMISSIONS",
        Rights::GET_QUEUE_PERMISSIONS,
    ),
    (
        "set-permissions",
        "MQSEC_CHANGE_QUEUE_PERMISSIONS",
        Rights::CHANGE_QUEUE_PERMISSIONS,
    ),
    (
        "take-ownership",
        "MQSEC_TAKE_QUEUE_OWNERSHIP",
        Rights::TAKE_QUEUE_OWNERSHIP,
    ),
    ("delete", "MQSEC_DELETE_QUEUE", Rights::DELETE_QUEUE),
    ("full", "MQSEC_QUEUE_GENERIC_ALL", Rights::GENERIC_ALL),
];

/// The order names are given when a mask is shown.
const DISPLAY_ORDER: &[(&str, &str, Rights)] = &[
    ("full", "", Rights::GENERIC_ALL),
    ("send", "", Rights::WRITE_MESSAGE),
    ("receive", "", Rights::RECEIVE_MESSAGE),
    ("peek", "", Rights::PEEK_MESSAGE),
    ("delete-message", "", Rights::DELETE_MESSAGE),
    ("delete-journal-message", "", Rights::DELETE_JOURNAL_MESSAGE),
    ("get-properties", "", Rights::GET_QUEUE_PROPERTIES),
    ("set-properties", "", Rights::SET_QUEUE_PROPERTIES),
    ("get-permissions", "", Rights::GET_QUEUE_PERMISSIONS),
    ("set-permissions", "", Rights::CHANGE_QUEUE_PERMISSIONS),
    ("take-ownership", "", Rights::TAKE_QUEUE_OWNERSHIP),
    ("delete", "", Rights::DELETE_QUEUE),
];

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Rights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Names for people reading queues.json; the mask as well, so no bit is ever lost.
        let mut names: Vec<String> = self.names().iter().map(|n| n.to_string()).collect();
        if names.last().is_some_and(|n| n == "other") {
            names.pop();
            names.push(format!("{:#x}", self.0));
        }
        names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rights, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names.iter().try_fold(Rights::NONE, |acc, n| {
            let r = match n.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16)
                    .map(Rights)
                    .map_err(|e| format!("right {n:?}: {e}")),
                None => Rights::parse_one(n),
            };
            r.map(|r| acc.union(r)).map_err(serde::de::Error::custom)
        })
    }
}

/// Who a right is granted to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// S-1-1-0: every sender that is not anonymous.
    Everyone,
    /// S-1-5-7 (ANONYMOUS LOGON): a sender that gives no identity.
    Anonymous,
    /// A Windows SID, canonical text form (`S-1-5-21-...`).
    Sid(String),
    /// A named lior user (API or AMQP), written `user:NAME`.
    User(String),
}

impl Principal {
    /// Parses `Everyone`, `Anonymous` (or `ANONYMOUS LOGON`), a SID string, or `user:NAME`.
    pub fn parse(text: &str) -> Result<Principal, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "everyone" | "s-1-1-0" => return Ok(Principal::Everyone),
            "anonymous" | "anonymous logon" | "nt authority\\anonymous logon" | "s-1-5-7" => {
                return Ok(Principal::Anonymous)
            }
            _ => {}
        }
        if let Some(name) = t.strip_prefix("user:") {
            if name.is_empty()
                || name.len() > USER_NAME_BYTES_MAX
                || name.chars().any(|c| c.is_control())
            {
                return Err(format!(
                    "user name {name:?}: 1 to {USER_NAME_BYTES_MAX} bytes without control \
                     characters"
                ));
            }
            return Ok(Principal::User(name.to_string()));
        }
        if lower.starts_with("s-") {
            return parse_sid(t).map(Principal::Sid);
        }
        Err(format!(
            "unknown principal {t:?}: give a SID (S-1-5-21-...), Everyone, Anonymous or \
             user:NAME"
        ))
    }
}

/// Checks a SID string (MS-DTYP 2.4.2.1: `S-1-<authority>-<sub>...`, 1 to 15 sub-authorities)
/// and returns its canonical form.
fn parse_sid(t: &str) -> Result<String, String> {
    let bad = |why: &str| format!("SID {t:?}: {why} (expected S-1-<authority>-<sub-authority>...)");
    let mut parts = t.split('-');
    parts.next(); // "S" or "s", checked by the caller
    if parts.next() != Some("1") {
        return Err(bad("revision must be 1"));
    }
    let authority = parts.next().ok_or_else(|| bad("no identifier authority"))?;
    let authority: u64 = if let Some(hex) = authority
        .strip_prefix("0x")
        .or_else(|| authority.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).map_err(|_| bad("bad identifier authority"))?
    } else {
        authority
            .parse()
            .map_err(|_| bad("bad identifier authority"))?
    };
    if authority >= 1 << 48 {
        return Err(bad("identifier authority over 48 bits"));
    }
    let subs: Vec<u32> = parts
        .map(|p| p.parse::<u32>().map_err(|_| bad("bad sub-authority")))
        .collect::<Result<_, _>>()?;
    if subs.is_empty() || subs.len() > 15 {
        return Err(bad("1 to 15 sub-authorities"));
    }
    let mut s = format!("S-1-{authority}");
    for x in subs {
        s.push_str(&format!("-{x}"));
    }
    Ok(s)
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Everyone => f.write_str("Everyone"),
            Principal::Anonymous => f.write_str("Anonymous"),
            Principal::Sid(s) => f.write_str(s),
            Principal::User(u) => write!(f, "user:{u}"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Principal, D::Error> {
        let s = String::deserialize(d)?;
        Principal::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One allow entry of a queue's access list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ace {
    pub principal: Principal,
    pub rights: Rights,
}

/// A queue's security: its access list and whether it takes only authenticated messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSecurity {
    /// MSMQ's Authenticate (PROPID_Q_AUTHENTICATE): only authenticated messages are taken.
    #[serde(default)]
    pub authenticate: bool,
    /// Allow entries, at most [`RIGHTS_ENTRIES_MAX`], one per principal.
    pub acl: Vec<Ace>,
}

impl Default for QueueSecurity {
    fn default() -> Self {
        QueueSecurity::windows_default()
    }
}

/// Why a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RightsError {
    Full,
}

impl fmt::Display for RightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RightsError::Full => write!(
                f,
                "the queue's access list is full ({RIGHTS_ENTRIES_MAX} principals, \
                 RIGHTS_ENTRIES_MAX); revoke an entry first or grant to Everyone"
            ),
        }
    }
}

impl QueueSecurity {
    /// A new private queue's rights (see the module's documentation).
    pub fn windows_default() -> QueueSecurity {
        QueueSecurity {
            authenticate: false,
            acl: vec![
                Ace {
                    principal: Principal::Everyone,
                    rights: Rights::GENERIC_WRITE,
                },
                Ace {
                    principal: Principal::Anonymous,
                    rights: Rights::WRITE_MESSAGE,
                },
            ],
        }
    }

    /// The security of a queue from a catalog written before rights existed, whose
    /// `write_access` listed who may send (SIDs or Everyone; empty meant everyone): the
    /// defaults, with send taken from Everyone and Anonymous and granted to each listed
    /// principal instead. An entry that is not a principal is an error naming it.
    pub fn from_write_access(write_access: &[String]) -> Result<QueueSecurity, String> {
        let mut s = QueueSecurity::windows_default();
        if write_access.is_empty() {
            return Ok(s);
        }
        s.revoke(&Principal::Everyone, Rights::WRITE_MESSAGE);
        s.revoke(&Principal::Anonymous, Rights::WRITE_MESSAGE);
        for w in write_access {
            let p = Principal::parse(w).map_err(|e| format!("write_access entry: {e}"))?;
            s.grant(p, Rights::WRITE_MESSAGE)
                .map_err(|e| format!("write_access: {e}"))?;
        }
        Ok(s)
    }

    /// Adds `rights` to `p`'s entry (made if missing; refused when the list is full).
    pub fn grant(&mut self, p: Principal, rights: Rights) -> Result<(), RightsError> {
        if let Some(e) = self.acl.iter_mut().find(|e| e.principal == p) {
            e.rights = e.rights.union(rights);
            return Ok(());
        }
        if self.acl.len() >= RIGHTS_ENTRIES_MAX {
            return Err(RightsError::Full);
        }
        self.acl.push(Ace {
            principal: p,
            rights,
        });
        Ok(())
    }

    /// Takes `rights` from `p`'s entry; an entry left with no right is removed. Returns whether
    /// anything changed.
    pub fn revoke(&mut self, p: &Principal, rights: Rights) -> bool {
        let before = self.acl.clone();
        for e in self.acl.iter_mut().filter(|e| &e.principal == p) {
            e.rights = e.rights.without(rights);
        }
        self.acl.retain(|e| !e.rights.is_empty());
        self.acl != before
    }

    /// The rights the principals of `token` hold together.
    pub fn rights_of(&self, token: &[Principal]) -> Rights {
        self.acl
            .iter()
            .filter(|e| token.contains(&e.principal))
            .fold(Rights::NONE, |acc, e| acc.union(e.rights))
    }
}

/// The identity an arriving message claims (its SecurityHeader's sender id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderId {
    /// No SecurityHeader, or ST = 0.
    None,
    /// ST = 1: a SID (text form).
    Sid(String),
    /// ST = 2: the sending queue manager's GUID.
    QmGuid,
}

/// The principals an arriving message is checked as (see the module's documentation).
pub fn token(sender: &SenderId, authenticated: bool) -> Vec<Principal> {
    match sender {
        SenderId::None => vec![Principal::Anonymous],
        SenderId::QmGuid => vec![Principal::Everyone],
        SenderId::Sid(s) if authenticated => vec![Principal::Sid(s.clone()), Principal::Everyone],
        SenderId::Sid(_) => vec![Principal::Everyone],
    }
}

/// Whether `p` is in `token(sender, authenticated)`, without building the token.
fn in_token(p: &Principal, sender: &SenderId, authenticated: bool) -> bool {
    match (p, sender) {
        (Principal::Anonymous, SenderId::None) => true,
        (Principal::Everyone, SenderId::QmGuid | SenderId::Sid(_)) => true,
        (Principal::Sid(s), SenderId::Sid(x)) => authenticated && s == x,
        _ => false,
    }
}

/// Why an arriving message is refused at its target queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The body is encrypted (SecurityHeader EB): lior holds no key to decrypt it.
    Encrypted,
    /// The queue takes only authenticated messages (Authenticate) and this one is not.
    NotAuthenticated,
    /// No principal of the sender's token holds MQSEC_WRITE_MESSAGE on the queue.
    AccessDenied,
}

impl Refusal {
    /// The NACK class Windows gives it (MS-MQQB 3.1.5.8.3; PROPID_Q_AUTHENTICATE).
    pub fn class(&self) -> MessageClass {
        match self {
            // "If the decryption fails, the message MUST be rejected ... iMessageClass:
            // MQMSG_CLASS_NACK_BAD_ENCRYPTION" (MS-MQQB 3.1.5.8.3); a receiver without the
            // private key of the CSP cannot decrypt.
            Refusal::Encrypted => MessageClass::NACK_BAD_ENCRYPTION,
            // "messages are rejected by the queue if the sending application did not request
            // authentication ... an acknowledgment message with the message class
            // MQMSG_CLASS_NACK_BAD_SIGNATURE" (PROPID_Q_AUTHENTICATE, MSMQ documentation).
            Refusal::NotAuthenticated => MessageClass::NACK_BAD_SIGNATURE,
            // "If the Access Check Algorithm does not return success ... MQMSG_CLASS_NACK_
            // ACCESS_DENIED" (MS-MQQB 3.1.5.8.3).
            Refusal::AccessDenied => MessageClass::NACK_ACCESS_DENIED,
        }
    }
}

/// The check at the target (MS-MQQB 3.1.5.8.3, in its order: decryption, then authentication,
/// then the access check for MQSEC_WRITE_MESSAGE). `authenticated` says whether the message's
/// signature was verified; nothing verifies one yet, so callers pass `false`.
pub fn check_arrival(
    security: &QueueSecurity,
    sender: &SenderId,
    authenticated: bool,
    body_encrypted: bool,
) -> Result<(), Refusal> {
    if body_encrypted {
        return Err(Refusal::Encrypted);
    }
    if security.authenticate && !authenticated {
        return Err(Refusal::NotAuthenticated);
    }
    // The same principals as `token`, matched in place: this runs for every arriving message,
    // and building the token allocated.
    let held = security
        .acl
        .iter()
        .filter(|e| in_token(&e.principal, sender, authenticated))
        .fold(Rights::NONE, |acc, e| acc.union(e.rights));
    if held.contains(Rights::WRITE_MESSAGE) {
        Ok(())
    } else {
        Err(Refusal::AccessDenied)
    }
}

/// When each peer's last refusal was logged: one line per peer per
/// [`REFUSAL_LOG_INTERVAL_S`], at most [`REFUSAL_LOG_PEERS_MAX`] peers remembered.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: BTreeMap<Guid, u64>,
}

impl RefusalLog {
    pub const fn new() -> RefusalLog {
        RefusalLog {
            last: BTreeMap::new(),
        }
    }

    /// Whether a refusal of a message from `peer` at `now_s` should be logged (and remembers
    /// it if so).
    pub fn allow(&mut self, peer: Guid, now_s: u64) -> bool {
        if let Some(&t) = self.last.get(&peer) {
            if now_s.saturating_sub(t) < REFUSAL_LOG_INTERVAL_S {
                return false;
            }
        } else if self.last.len() >= REFUSAL_LOG_PEERS_MAX {
            self.last.clear();
        }
        self.last.insert(peer, now_s);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-512";
    const BOB: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

    fn sid(s: &str) -> SenderId {
        SenderId::Sid(s.to_string())
    }

    #[test]
    fn the_in_place_match_is_the_token() {
        let principals = [
            Principal::Everyone,
            Principal::Anonymous,
            Principal::Sid(ALICE.into()),
            Principal::Sid(BOB.into()),
            Principal::User("alice".into()),
        ];
        for sender in [SenderId::None, SenderId::QmGuid, sid(ALICE), sid(BOB)] {
            for authenticated in [false, true] {
                let t = token(&sender, authenticated);
                for p in &principals {
                    assert_eq!(
                        in_token(p, &sender, authenticated),
                        t.contains(p),
                        "{p:?} for {sender:?}, authenticated {authenticated}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_defaults_are_windows_private_queue_defaults() {
        let d = QueueSecurity::windows_default();
        assert!(!d.authenticate);
        let everyone = d.rights_of(&[Principal::Everyone]);
        assert_eq!(everyone, Rights::GENERIC_WRITE);
        assert_eq!(
            everyone.names(),
            ["send", "get-properties", "get-permissions"]
        );
        assert!(!everyone.contains(Rights::PEEK_MESSAGE));
        assert_eq!(d.rights_of(&[Principal::Anonymous]), Rights::WRITE_MESSAGE);
        // Anybody may send by default: a Windows sender's SID, a QM GUID, no identity.
        for s in [sid(ALICE), SenderId::QmGuid, SenderId::None] {
            assert_eq!(check_arrival(&d, &s, false, false), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn a_grant_to_one_sid_admits_only_that_sid_and_only_when_authenticated() {
        let mut s = QueueSecurity::windows_default();
        s.revoke(&Principal::Everyone, Rights::WRITE_MESSAGE);
        s.revoke(&Principal::Anonymous, Rights::WRITE_MESSAGE);
        s.grant(Principal::parse(ALICE).unwrap(), Rights::WRITE_MESSAGE)
            .unwrap();
        assert_eq!(check_arrival(&s, &sid(ALICE), true, false), Ok(()));
        assert_eq!(
            check_arrival(&s, &sid(BOB), true, false),
            Err(Refusal::AccessDenied)
        );
        // A SID anybody could have written in the packet is not trusted.
        assert_eq!(
            check_arrival(&s, &sid(ALICE), false, false),
            Err(Refusal::AccessDenied)
        );
        assert_eq!(
            check_arrival(&s, &SenderId::None, false, false),
            Err(Refusal::AccessDenied)
        );
        assert_eq!(
            check_arrival(&s, &SenderId::QmGuid, false, false),
            Err(Refusal::AccessDenied)
        );
        assert_eq!(
            Refusal::AccessDenied.class(),
            MessageClass::NACK_ACCESS_DENIED
        );
    }

    #[test]
    fn everyone_does_not_include_anonymous_and_anonymous_is_not_everyone() {
        let mut s = QueueSecurity::windows_default();
        s.revoke(&Principal::Anonymous, Rights::WRITE_MESSAGE);
        assert_eq!(s.acl.len(), 1, "an entry with no right left is removed");
        assert_eq!(
            check_arrival(&s, &SenderId::None, false, false),
            Err(Refusal::AccessDenied)
        );
        assert_eq!(check_arrival(&s, &sid(BOB), false, false), Ok(()));
        let mut s = QueueSecurity::windows_default();
        s.revoke(&Principal::Everyone, Rights::WRITE_MESSAGE);
        assert_eq!(check_arrival(&s, &SenderId::None, false, false), Ok(()));
        assert_eq!(
            check_arrival(&s, &SenderId::QmGuid, false, false),
            Err(Refusal::AccessDenied)
        );
    }

    #[test]
    fn encryption_and_authenticate_refuse_with_the_windows_classes() {
        let mut s = QueueSecurity::windows_default();
        assert_eq!(
            check_arrival(&s, &sid(ALICE), true, true),
            Err(Refusal::Encrypted)
        );
        assert_eq!(
            Refusal::Encrypted.class(),
            MessageClass::NACK_BAD_ENCRYPTION
        );
        s.authenticate = true;
        assert_eq!(
            check_arrival(&s, &sid(ALICE), false, false),
            Err(Refusal::NotAuthenticated)
        );
        assert_eq!(
            Refusal::NotAuthenticated.class(),
            MessageClass::NACK_BAD_SIGNATURE
        );
        assert_eq!(check_arrival(&s, &sid(ALICE), true, false), Ok(()));
    }

    #[test]
    fn principals_parse_to_one_canonical_form() {
        assert_eq!(Principal::parse("everyone"), Ok(Principal::Everyone));
        assert_eq!(Principal::parse("S-1-1-0"), Ok(Principal::Everyone));
        assert_eq!(
            Principal::parse("ANONYMOUS LOGON"),
            Ok(Principal::Anonymous)
        );
        assert_eq!(Principal::parse("s-1-5-7"), Ok(Principal::Anonymous));
        assert_eq!(
            Principal::parse("s-1-5-21-1-2-3-500").unwrap().to_string(),
            "S-1-5-21-1-2-3-500"
        );
        assert_eq!(
            Principal::parse("S-1-0x5-32-544").unwrap().to_string(),
            "S-1-5-32-544"
        );
        assert_eq!(
            Principal::parse("user:orders-app"),
            Ok(Principal::User("orders-app".into()))
        );
        for bad in [
            "S-2-5-1",
            "S-1-5",
            "S-1-x-1",
            "S-1-5-99999999999",
            "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
            "bob",
            "user:",
            "",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Principal::parse("alice").unwrap_err().contains("S-1-5-21"));
    }

    #[test]
    fn rights_parse_from_lior_and_msmq_names_and_show_grouped() {
        assert_eq!(Rights::parse_one("send"), Ok(Rights::WRITE_MESSAGE));
        assert_eq!(
            Rights::parse_one("MQSEC_WRITE_MESSAGE"),
            Ok(Rights::WRITE_MESSAGE)
        );
        assert_eq!(
            Rights::parse_one("mqsec_receive_message"),
            Ok(Rights::RECEIVE_MESSAGE)
        );
        assert_eq!(Rights::parse_one("FULL"), Ok(Rights::GENERIC_ALL));
        assert!(Rights::parse_one("write")
            .unwrap_err()
            .contains("send, receive"));
        assert_eq!(
            Rights::parse_list(&["peek", "delete-message"]),
            Ok(Rights::RECEIVE_MESSAGE)
        );
        assert!(Rights::parse_list::<&str>(&[]).is_err());
        assert_eq!(Rights::GENERIC_ALL.to_string(), "full");
        assert_eq!(Rights::RECEIVE_MESSAGE.to_string(), "receive");
        assert_eq!(Rights::NONE.to_string(), "none");
        // Serialised as names, read back exactly (unnamed bits too).
        for r in [
            Rights::GENERIC_READ,
            Rights(0x4 | 0x100),
            Rights::GENERIC_ALL,
        ] {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Rights>(&j).unwrap(), r, "{j}");
        }
    }

    #[test]
    fn grants_merge_per_principal_revokes_remove_and_the_list_is_bounded() {
        let mut s = QueueSecurity::windows_default();
        let alice = Principal::parse(ALICE).unwrap();
        s.grant(alice.clone(), Rights::PEEK_MESSAGE).unwrap();
        s.grant(alice.clone(), Rights::WRITE_MESSAGE).unwrap();
        assert_eq!(s.acl.len(), 3);
        assert_eq!(s.rights_of(std::slice::from_ref(&alice)), Rights(0x2 | 0x4));
        assert!(s.revoke(&alice, Rights::GENERIC_ALL));
        assert!(
            !s.revoke(&alice, Rights::GENERIC_ALL),
            "nothing left to revoke"
        );
        assert_eq!(s.acl.len(), 2);
        for i in 0..(RIGHTS_ENTRIES_MAX - 2) {
            s.grant(
                Principal::Sid(format!("S-1-5-21-{i}")),
                Rights::WRITE_MESSAGE,
            )
            .unwrap();
        }
        assert_eq!(
            s.grant(alice.clone(), Rights::WRITE_MESSAGE),
            Err(RightsError::Full)
        );
        // An existing entry still takes more rights when the list is full.
        s.grant(Principal::Everyone, Rights::PEEK_MESSAGE).unwrap();
    }

    #[test]
    fn write_access_of_an_older_catalog_becomes_send_grants() {
        assert_eq!(
            QueueSecurity::from_write_access(&[]).unwrap(),
            QueueSecurity::windows_default()
        );
        let s = QueueSecurity::from_write_access(&[ALICE.to_string()]).unwrap();
        assert_eq!(
            s.rights_of(&[Principal::Everyone]),
            Rights::GET_QUEUE_PROPERTIES.union(Rights::GET_QUEUE_PERMISSIONS)
        );
        assert_eq!(s.rights_of(&[Principal::Anonymous]), Rights::NONE);
        assert_eq!(
            s.rights_of(&[Principal::parse(ALICE).unwrap()]),
            Rights::WRITE_MESSAGE
        );
        let s = QueueSecurity::from_write_access(&["Everyone".to_string()]).unwrap();
        assert!(s
            .rights_of(&[Principal::Everyone])
            .contains(Rights::WRITE_MESSAGE));
        let e = QueueSecurity::from_write_access(&["bob".to_string()]).unwrap_err();
        assert!(e.contains("write_access") && e.contains("bob"), "{e}");
    }

    #[test]
    fn refusals_are_logged_once_per_peer_per_interval_and_the_table_is_bounded() {
        let mut l = RefusalLog::new();
        let a = Guid([1; 16]);
        assert!(l.allow(a, 100));
        assert!(!l.allow(a, 100 + REFUSAL_LOG_INTERVAL_S - 1));
        assert!(l.allow(Guid([2; 16]), 101));
        assert!(l.allow(a, 100 + REFUSAL_LOG_INTERVAL_S));
        for i in 0..(REFUSAL_LOG_PEERS_MAX as u32 * 2) {
            let mut g = [0u8; 16];
            g[..4].copy_from_slice(&i.to_le_bytes());
            g[15] = 9;
            l.allow(Guid(g), 200);
            assert!(l.last.len() <= REFUSAL_LOG_PEERS_MAX);
        }
    }
}
