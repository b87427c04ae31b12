//! Group commit for `fsync = "always"`: one thread writes and syncs the lines of many requests
//! at once, and every request waits until its own line is on disk.
//!
//! A batch that takes only what is queued when the writer wakes is small when requests are
//! CPU-bound (a sync takes ~100 µs here; in that time only a few requests reach their audit
//! line), so the sync's cost is shared by few. Requests therefore *announce* their line when they
//! start ([`Coming::announce`]); the writer keeps collecting while announced lines are still to
//! come, until none is, until no line arrived for [`Window::gap`], or for at most
//! [`Window::cap`] in all. A lone request never waits (nothing else is announced); a request
//! stuck on a slow source holds a batch for at most `gap`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// How long a batch may wait for announced lines.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    /// Stop waiting when no line arrived for this long.
    pub gap: Duration,
    /// Never wait longer than this for one batch.
    pub cap: Duration,
}

impl Window {
    /// Several requests' worth of CPU at the rates this machine serves, and small beside a
    /// sync.
    pub(super) const DEFAULT: Self = Self {
        gap: Duration::from_micros(200),
        cap: Duration::from_millis(1),
    };
}

/// The number of announced lines not yet handed to the writer.
#[derive(Clone, Debug, Default)]
pub(super) struct Coming(Arc<AtomicUsize>);

impl Coming {
    /// Announces one line; it counts until the returned ticket is dropped (on hand-over, or
    /// when the request ends without writing one).
    pub(super) fn announce(&self) -> Ticket {
        self.0.fetch_add(1, Ordering::AcqRel);
        Ticket(Arc::clone(&self.0))
    }

    fn pending(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One announced line (see [`Coming::announce`]).
#[derive(Debug)]
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a batch stopped collecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Closed {
    /// No announced line was outstanding (or the batch is full).
    AllIn,
    /// Announced lines were outstanding but none arrived for [`Window::gap`].
    Gap,
    /// [`Window::cap`] passed.
    Cap,
}

/// Most lines in one batch.
pub(super) const MAX_BATCH: usize = 1024;

/// Adds to `batch` (which holds the batch's first job) what is queued and what is announced,
/// within `window`. A line whose ticket is dropped just before it is queued may miss this
/// batch and start the next one; the drain after a zero count takes what is already queued.
pub(super) fn collect<J>(
    queue: &Receiver<J>,
    coming: &Coming,
    window: Window,
    batch: &mut Vec<J>,
) -> Closed {
    let started = Instant::now();
    let mut last = started;
    loop {
        loop {
            if batch.len() >= MAX_BATCH {
                return Closed::AllIn;
            }
            match queue.try_recv() {
                Ok(job) => {
                    batch.push(job);
                    last = Instant::now();
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if coming.pending() == 0 {
            // Lines handed over between the drain and the count.
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            return Closed::AllIn;
        }
        let now = Instant::now();
        if now >= started + window.cap {
            return Closed::Cap;
        }
        if now >= last + window.gap {
            return Closed::Gap;
        }
        let until = (started + window.cap).min(last + window.gap);
        match queue.recv_timeout(until - now) {
            Ok(job) => {
                batch.push(job);
                last = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Closed::AllIn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Window = Window {
        gap: Duration::from_secs(60),
        cap: Duration::from_secs(120),
    };

    /// A batch waits for a line that was announced and takes it when it comes.
    #[test]
    fn a_batch_waits_for_announced_lines() {
        let (tx, rx) = std::sync::mpsc::channel();
        let coming = Coming::default();
        let ticket = coming.announce();
        let writer = std::thread::spawn({
            let coming = coming.clone();
            move || {
                let mut batch = vec![0];
                let closed = collect(&rx, &coming, LONG, &mut batch);
                (batch, closed)
            }
        });
        // The line comes while its ticket is still held: the batch must be waiting for it.
        tx.send(1).unwrap();
        drop(ticket);
        let (batch, closed) = writer.join().unwrap();
        assert_eq!(batch, vec![0, 1]);
        assert_eq!(closed, Closed::AllIn);
    }

    /// Without announced lines the batch closes at once, whatever the window.
    #[test]
    fn nothing_announced_means_no_wait() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(1).unwrap();
        let mut batch = vec![0];
        assert_eq!(
            collect(&rx, &Coming::default(), LONG, &mut batch),
            Closed::AllIn
        );
        assert_eq!(batch, vec![0, 1]);
    }

    /// A line announced but never written (a request stuck on a slow source) holds the batch
    /// for one gap, not for ever; so does the cap.
    #[test]
    fn a_missing_line_costs_at_most_the_window() {
        let (_tx, rx) = std::sync::mpsc::channel::<u32>();
        let coming = Coming::default();
        let _stuck = coming.announce();
        let gap = Window {
            gap: Duration::from_millis(5),
            cap: Duration::from_secs(60),
        };
        let mut batch = vec![0];
        assert_eq!(collect(&rx, &coming, gap, &mut batch), Closed::Gap);
        let cap = Window {
            gap: Duration::from_secs(60),
            cap: Duration::from_millis(5),
        };
        assert_eq!(collect(&rx, &coming, cap, &mut batch), Closed::Cap);
        assert_eq!(batch, vec![0]);
    }
}
