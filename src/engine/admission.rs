//! Admission by peer address: how many connections one IP address holds open at once, shared by
//! every shard of a door (the kernel spreads one peer's connections over all shards). The table
//! holds only addresses with a connection open, so it is bounded by the connection limits.
//!
//! An IPv6 peer counts by its /64 prefix (one host usually holds a whole /64, so counting single
//! addresses would not limit it); an IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections per peer IP address, with a limit.
#[derive(Debug)]
pub struct PeerLimiter {
    max: usize,
    table: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerLimiter {
    /// A limiter letting each address hold `max` connections.
    pub fn new(max: usize) -> Arc<PeerLimiter> {
        Arc::new(PeerLimiter {
            max,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// The per-address limit.
    pub fn max(&self) -> usize {
        self.max
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The table key of an address: itself for IPv4, the IPv4 address of an IPv4-mapped IPv6
    /// address, the /64 prefix of any other IPv6 address.
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            },
        }
    }

    /// Counts one more connection from `ip`; false (and nothing counted) at the limit.
    pub fn try_add(&self, ip: IpAddr) -> bool {
        let ip = Self::key(ip);
        let mut t = self.table();
        let n = t.entry(ip).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                t.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets one connection from `ip` (counted by a successful [`PeerLimiter::try_add`]).
    pub fn remove(&self, ip: IpAddr) {
        let ip = Self::key(ip);
        let mut t = self.table();
        if let Some(n) = t.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&ip);
            }
        }
    }

    /// Connections open from `ip` now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.table().get(&Self::key(ip)).copied().unwrap_or(0)
    }

    /// Counts a connection for as long as the returned guard lives (for async servers).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerGuard> {
        self.try_add(ip).then(|| PeerGuard {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

/// One counted connection; dropping it forgets the connection.
#[derive(Debug)]
pub struct PeerGuard {
    limiter: Arc<PeerLimiter>,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.limiter.remove(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_counted_apart_and_released() {
        let l = PeerLimiter::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.try_add(a) && l.try_add(a));
        assert!(!l.try_add(a));
        assert!(l.try_add(b));
        l.remove(a);
        assert!(l.try_add(a));
        let g = l.admit(b).unwrap();
        assert!(l.admit(b).is_none());
        drop(g);
        assert_eq!(l.count(b), 1);
        // IPv6 by /64; IPv4-mapped as IPv4.
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.try_add(x) && l.try_add(y));
        assert!(!l.try_add(x), "the same /64");
        assert!(l.try_add(z));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(l.try_add(mapped));
        assert_eq!(l.count(b), 2, "counted as 127.0.0.1");
    }
}
