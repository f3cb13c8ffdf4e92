//! Which local queue an incoming UserMessage is for (MS-MQQB 3.1.5.8.2, 3.1.5.8.5, DIGEST §8.3).
//!
//! A message is ours when its QueueManagerAddress is our GUID or NULL and its destination names
//! this machine: a private queue number (DQ=3), or a direct format name (DQ=7) whose address is
//! one of our host names, aliases or local IP addresses. lior keeps one queue namespace, so a
//! direct public path (`OS:host\q`) names the queue `q` just as `OS:host\PRIVATE$\q` does.

use std::net::IpAddr;

use crate::wire::format_name::{DirectAddress, DirectName, QueuePath, SystemQueue};
use crate::wire::user::{QueueRef, UserHeader};
use crate::wire::Guid;

/// The names and addresses this queue manager answers to.
#[derive(Clone, Debug, Default)]
pub struct LocalIdentity {
    pub guid: Guid,
    /// Lower-cased host names and aliases (both the full and the short form of each).
    pub names: Vec<String>,
    /// Local IP addresses (loopback is always local).
    pub addrs: Vec<IpAddr>,
}

impl LocalIdentity {
    /// The machine's identity: host name from the kernel, local IPv4 addresses from
    /// `/proc/net/fib_trie`, IPv6 from `/proc/net/if_inet6`, plus configured aliases.
    pub fn discover(guid: Guid, aliases: &[String]) -> LocalIdentity {
        let mut id = LocalIdentity {
            guid,
            names: Vec::new(),
            addrs: Vec::new(),
        };
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            id.add_name(h.trim());
        }
        id.add_name("localhost");
        for a in aliases {
            // An alias that is an address adds that address (e.g. a NAT or loopback alias).
            match a.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                Ok(ip) => id.addrs.push(ip),
                Err(_) => id.add_name(a),
            }
        }
        id.addrs.push(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        id.addrs.push(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
        if let Ok(t) = std::fs::read_to_string("/proc/net/fib_trie") {
            id.addrs.extend(local_ipv4_from_fib_trie(&t));
        }
        if let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6") {
            id.addrs.extend(local_ipv6_from_if_inet6(&t));
        }
        id.addrs.sort();
        id.addrs.dedup();
        id
    }

    pub fn add_name(&mut self, name: &str) {
        let lower = name.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return;
        }
        if let Some((short, _)) = lower.split_once('.') {
            if short.parse::<u8>().is_err() && !self.names.iter().any(|n| n == short) {
                self.names.push(short.to_string());
            }
        }
        if !self.names.contains(&lower) {
            self.names.push(lower);
        }
    }

    /// Whether `a` is one of this machine's addresses. Only 127.0.0.1 and ::1 of the loopback
    /// range count (plus aliases), so other loopback addresses can stand for other machines
    /// in tests on one host.
    pub fn is_local_addr(&self, a: &IpAddr) -> bool {
        self.addrs.contains(a)
    }

    pub fn is_local_name(&self, host: &str) -> bool {
        let lower = host.to_ascii_lowercase();
        // `DIRECT=OS:.\...` names the local computer (MS-MQMQ 2.1.2).
        if lower == "." {
            return true;
        }
        if let Ok(ip) = lower
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            return self.is_local_addr(&ip);
        }
        self.names.contains(&lower)
            || lower
                .split_once('.')
                .is_some_and(|(short, _)| self.names.iter().any(|n| n == short))
    }

    /// Whether a direct address names this machine.
    pub fn is_local(&self, addr: &DirectAddress) -> bool {
        match addr {
            DirectAddress::Tcp(ip) => self.is_local_addr(ip),
            DirectAddress::Os(h) => self.is_local_name(h.as_str()),
            DirectAddress::Http { host, .. } | DirectAddress::Https { host, .. } => {
                self.is_local_name(host.as_str())
            }
            DirectAddress::Ipx(_) | DirectAddress::Spx(_) => false,
        }
    }
}

/// Local IPv4 addresses: the `/32 host LOCAL` leaves of the kernel's FIB trie.
pub fn local_ipv4_from_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last_leaf: Option<IpAddr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last_leaf = rest.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last_leaf {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Local IPv6 addresses from `/proc/net/if_inet6` (32 hex digits per line).
pub fn local_ipv6_from_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|h| h.len() == 32)
        .filter_map(|h| u128::from_str_radix(h, 16).ok())
        .map(|v| IpAddr::V6(std::net::Ipv6Addr::from(v)))
        .collect()
}

/// Where an incoming message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A local queue by name (direct format names).
    Named(String),
    /// A local private queue by number (DQ=3).
    Number(u32),
    /// A machine queue of this QM (`SYSTEM$;DEADLETTER` ...).
    System(SystemQueue),
    /// Not for this queue manager (another QM's GUID or another host): lior does not route.
    NotHere(String),
    /// For us, but naming no queue lior can hold (public GUIDs: there is no directory).
    Unknown(String),
}

/// Resolves the destination of a UserHeader.
pub fn route(h: &UserHeader<'_>, me: &LocalIdentity) -> Route {
    let qm = h.queue_manager_address;
    if !qm.is_null() && qm != me.guid {
        return Route::NotHere(format!("addressed to queue manager {qm}"));
    }
    match h.destination {
        QueueRef::DestinationPrivate(n) => Route::Number(n),
        QueueRef::Public(g) => Route::Unknown(format!("PUBLIC={g}: no directory service here")),
        QueueRef::Direct(u) => match DirectName::from_utf16(u) {
            Err(e) => Route::Unknown(format!("unreadable direct format name: {e}")),
            Ok(d) if !me.is_local(&d.address) => {
                Route::NotHere(format!("DIRECT={} names another machine", d.wire_string()))
            }
            Ok(d) => match &d.queue {
                QueuePath::Private { name, .. } | QueuePath::Public { name, .. } => {
                    Route::Named(name.as_str().to_string())
                }
                QueuePath::System(s) => Route::System(*s),
            },
        },
        other => Route::Unknown(format!(
            "destination encoding {} is not allowed",
            other.code()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::user::UserFlags;
    use crate::wire::{utf16z, Utf16};

    fn me() -> LocalIdentity {
        let mut id = LocalIdentity {
            guid: Guid([9; 16]),
            names: vec![],
            addrs: vec!["192.0.2.20".parse().unwrap()],
        };
        id.add_name("Linux1.example.com");
        id.addrs.push("127.0.0.1".parse().unwrap());
        id.addrs.push("127.0.0.7".parse().unwrap());
        id
    }

    fn header(dest: QueueRef<'_>, qm: Guid) -> UserHeader<'_> {
        UserHeader {
            source_queue_manager: Guid([1; 16]),
            queue_manager_address: qm,
            time_to_be_received: u32::MAX,
            sent_time: 0,
            message_id: 1,
            flags: UserFlags(UserFlags::MP),
            destination: dest,
            admin: QueueRef::None,
            response: QueueRef::None,
            connector_type: None,
        }
    }

    #[test]
    fn direct_names_for_this_machine_route_by_name() {
        for name in [
            "OS:linux1\\private$\\orders",
            "OS:LINUX1.example.com\\PRIVATE$\\orders",
            "TCP:192.0.2.20\\private$\\orders",
            "TCP:127.0.0.1\\orders",
            "TCP:127.0.0.7\\orders",
            "HTTP://linux1/msmq/private$/orders",
        ] {
            let w = utf16z(name);
            let r = route(&header(QueueRef::Direct(Utf16(&w)), Guid::NULL), &me());
            assert_eq!(r, Route::Named("orders".into()), "{name}");
        }
        let w = utf16z("OS:linux1\\SYSTEM$;DEADLETTER");
        let r = route(&header(QueueRef::Direct(Utf16(&w)), Guid::NULL), &me());
        assert_eq!(r, Route::System(SystemQueue::DeadLetter));
    }

    #[test]
    fn other_machines_and_other_queue_managers_are_not_here() {
        // Frame 7 of the spec: OS:a04bm02\q.
        let w = utf16z("OS:a04bm02\\q");
        let r = route(&header(QueueRef::Direct(Utf16(&w)), Guid::NULL), &me());
        assert!(matches!(r, Route::NotHere(_)), "{r:?}");
        let w = utf16z("TCP:192.0.2.99\\private$\\orders");
        assert!(matches!(
            route(&header(QueueRef::Direct(Utf16(&w)), Guid::NULL), &me()),
            Route::NotHere(_)
        ));
        let r = route(
            &header(QueueRef::DestinationPrivate(0x10), Guid([5; 16])),
            &me(),
        );
        assert!(matches!(r, Route::NotHere(_)));
        let r = route(
            &header(QueueRef::DestinationPrivate(0x10), Guid([9; 16])),
            &me(),
        );
        assert_eq!(r, Route::Number(0x10));
    }

    #[test]
    fn hostile_direct_names_do_not_route() {
        let junk = [0xFFu8, 0xD8, 0x41, 0x00];
        let r = route(&header(QueueRef::Direct(Utf16(&junk)), Guid::NULL), &me());
        assert!(matches!(r, Route::Unknown(_)));
    }

    #[test]
    fn proc_parsers_find_local_addresses() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.5\n        /32 host LOCAL\n     \
                    |-- 10.0.0.255\n        /32 link BROADCAST\n";
        assert_eq!(
            local_ipv4_from_fib_trie(trie),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            local_ipv6_from_if_inet6(v6),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let real = LocalIdentity::discover(Guid::NULL, &["extra".into()]);
        assert!(real.is_local_name("localhost") && real.is_local_name("EXTRA"));
    }
}
