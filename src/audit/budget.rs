//! How many failed authentications one peer address may write to the audit trail: the first
//! [`PER_WINDOW`] in each [`WINDOW`] are written one by one, the rest only counted, and the
//! count is written as one summary line when the peer fails again in a later window. Anyone
//! who can open a connection can fail to authenticate; without a budget they choose how fast
//! the trail grows (and, with `fail_closed`, when a full disk stops every tenant — THREATS
//! row 27).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per peer address per window.
pub(super) const PER_WINDOW: u32 = 10;
/// The window.
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered; past this the memory starts over (an attacker with many addresses gets
/// a fresh budget for each, which the per-address budget cannot prevent anyway).
const MAX_PEERS: usize = 10_000;

/// What to write for one failed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write its line.
    Write,
    /// Write its line, and a summary of this many failures that were not written.
    WriteAfterSuppressed(u64),
    /// Count it only.
    Suppress,
}

#[derive(Debug, Default)]
pub(crate) struct RefusalBudget {
    peers: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl RefusalBudget {
    pub(crate) fn admit(&self, peer: IpAddr, now: Instant) -> Admit {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.clear();
        }
        let w = peers.entry(peer).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= WINDOW {
            let earlier = w.suppressed;
            *w = Window {
                started: now,
                written: 1,
                suppressed: 0,
            };
            return if earlier > 0 {
                Admit::WriteAfterSuppressed(earlier)
            } else {
                Admit::Write
            };
        }
        if w.written < PER_WINDOW {
            w.written += 1;
            Admit::Write
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_27_failed_authentications_are_budgeted_per_peer() {
        let b = RefusalBudget::default();
        let (a, other): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let written = (0..1000)
            .filter(|_| b.admit(a, t0) != Admit::Suppress)
            .count();
        assert_eq!(written, PER_WINDOW as usize);
        assert_eq!(
            b.admit(other, t0),
            Admit::Write,
            "another peer has its own budget"
        );
        assert_eq!(
            b.admit(a, t0 + WINDOW),
            Admit::WriteAfterSuppressed(1000 - u64::from(PER_WINDOW))
        );
        assert_eq!(b.admit(a, t0 + WINDOW), Admit::Write);
    }
}
