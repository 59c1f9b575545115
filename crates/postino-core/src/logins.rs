//! Failed logins counted per source address: once an address has failed `failures_max` times
//! within `window_ms`, its logins are refused at once, without checking the password, until
//! that window ends. A successful login clears its address. Protocol-neutral: front-ends pass
//! the peer's address and the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// Addresses remembered at most; past this, windows that ended are forgotten, and if none has,
/// the oldest window goes.
const ADDRESSES_MAX: usize = 16_384;

/// How many failures an address may have in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures allowed per window; 0 turns the limit off.
    pub failures_max: u32,
    pub window_ms: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            failures_max: 5,
            window_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since_ms: i64,
}

/// The failures of each address in its current window.
#[derive(Debug, Default)]
pub struct LoginGuard {
    limits: Mutex<LoginLimits>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginGuard {
    /// Replaces the limits.
    pub fn set_limits(&self, limits: LoginLimits) {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
    }

    fn limits(&self) -> LoginLimits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `None` when `peer` may try a login now; otherwise how many milliseconds until it may.
    pub fn blocked_for(&self, peer: IpAddr, now_ms: i64) -> Option<u64> {
        let limits = self.limits();
        if limits.failures_max == 0 {
            return None;
        }
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failures.get(&peer)?;
        let ends_ms = entry.since_ms.saturating_add(limits.window_ms as i64);
        (entry.count >= limits.failures_max && now_ms < ends_ms)
            .then(|| (ends_ms - now_ms).unsigned_abs())
    }

    /// Counts a failed login from `peer`.
    pub fn failed(&self, peer: IpAddr, now_ms: i64) {
        let window = self.limits().window_ms as i64;
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= ADDRESSES_MAX && !failures.contains_key(&peer) {
            failures.retain(|_, entry| now_ms < entry.since_ms.saturating_add(window));
            if failures.len() >= ADDRESSES_MAX
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, entry)| entry.since_ms)
                    .map(|(address, _)| *address)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(peer).or_insert(Failures {
            count: 0,
            since_ms: now_ms,
        });
        if now_ms >= entry.since_ms.saturating_add(window) {
            *entry = Failures {
                count: 0,
                since_ms: now_ms,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    /// Forgets `peer`'s failures after a successful login.
    pub fn succeeded(&self, peer: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let guard = LoginGuard::default();
        guard.set_limits(LoginLimits {
            failures_max: 3,
            window_ms: 1_000,
        });
        let peer: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        for at in [0, 100, 200] {
            assert_eq!(guard.blocked_for(peer, at), None);
            guard.failed(peer, at);
        }
        assert_eq!(guard.blocked_for(peer, 300), Some(700));
        assert_eq!(
            guard.blocked_for(other, 300),
            None,
            "other addresses are not affected"
        );
        assert_eq!(guard.blocked_for(peer, 1_000), None, "the window ended");
        guard.failed(peer, 1_000);
        assert_eq!(
            guard.blocked_for(peer, 1_001),
            None,
            "a new window counts from zero"
        );
        guard.failed(peer, 1_001);
        guard.succeeded(peer);
        guard.failed(peer, 1_002);
        guard.failed(peer, 1_003);
        assert_eq!(
            guard.blocked_for(peer, 1_004),
            None,
            "a success cleared the count"
        );
        guard.set_limits(LoginLimits {
            failures_max: 0,
            window_ms: 1_000,
        });
        for at in 0..10 {
            guard.failed(other, 2_000 + at);
        }
        assert_eq!(
            guard.blocked_for(other, 2_010),
            None,
            "0 turns the limit off"
        );
    }

    #[test]
    fn the_table_of_addresses_stays_bounded() {
        let guard = LoginGuard::default();
        for index in 0..(ADDRESSES_MAX as u32 + 10) {
            guard.failed(IpAddr::from(index.to_be_bytes()), i64::from(index));
        }
        let size = guard
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(size, ADDRESSES_MAX);
    }
}
