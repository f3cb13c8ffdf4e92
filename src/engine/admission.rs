//! Admission by peer address: how many connections one IP address holds open at once, shared by
//! every shard of a door (the kernel spreads one peer's connections over all shards). The table
//! holds only addresses with a connection open, so it is bounded by the connection limits.

use std::collections::HashMap;
use std::net::IpAddr;
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

    /// Counts one more connection from `ip`; false (and nothing counted) at the limit.
    pub fn try_add(&self, ip: IpAddr) -> bool {
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
        self.table().get(&ip).copied().unwrap_or(0)
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
    }
}
