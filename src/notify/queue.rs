//! The notification queue: bounded, one pending event per subject (a newer event about the
//! same subject replaces the pending one — a subject flapping, or read in a loop, is one event
//! in flight), and fair across groups (a team, or a consumer): events are taken round-robin,
//! one group's burst delays no other group's first event, and when the queue is full the
//! group holding the most gives up its oldest.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Event;

pub(super) struct Queue {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
    capacity: usize,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("pending", &self.lock().events.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

#[derive(Default)]
struct Pending {
    /// The newest event per subject.
    events: HashMap<String, Event>,
    /// Each group's subjects, oldest first.
    groups: HashMap<String, VecDeque<String>>,
    /// Groups with something pending, in the order they are served.
    turn: VecDeque<String>,
}

/// Whose event it is, for fairness: the team (or consumer) the subject names first —
/// `credential:payments/x` and `payments/x:client_certificate` are `payments`.
fn group(subject: &str) -> &str {
    let s =
        subject.split_once(':').map_or(
            subject,
            |(kind, rest)| {
                if kind.contains('/') { subject } else { rest }
            },
        );
    s.split(['/', ':']).next().unwrap_or("")
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event`, never waiting: a pending event about the same subject is replaced;
    /// a full queue drops the oldest event of the group holding the most (counted).
    pub(super) fn push(&self, event: Event) {
        let mut p = self.lock();
        if let Some(slot) = p.events.get_mut(&event.subject) {
            *slot = event;
            drop(p);
            self.wake.notify_one();
            return;
        }
        if p.events.len() >= self.capacity {
            let fullest = p
                .groups
                .iter()
                .max_by_key(|(_, subjects)| subjects.len())
                .map(|(g, _)| g.clone());
            if let Some(g) = fullest {
                p.take_from(&g);
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(dropped = n, group = %g, "notification queue full: the oldest event of the group holding the most dropped");
            }
        }
        let g = group(&event.subject).to_owned();
        let subject = event.subject.clone();
        p.events.insert(subject.clone(), event);
        let queue = p.groups.entry(g.clone()).or_default();
        queue.push_back(subject);
        if queue.len() == 1 {
            p.turn.push_back(g);
        }
        drop(p);
        self.wake.notify_one();
    }

    /// The next event, round-robin across groups; waits while there is none.
    pub(super) async fn next(&self) -> Event {
        loop {
            let woken = self.wake.notified();
            if let Some(e) = self.try_next() {
                return e;
            }
            woken.await;
        }
    }

    fn try_next(&self) -> Option<Event> {
        let mut p = self.lock();
        let g = p.turn.pop_front()?;
        let event = p.take_from(&g);
        if p.groups.get(&g).is_some_and(|q| !q.is_empty()) {
            p.turn.push_back(g);
        }
        event
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Pending {
    /// The oldest event of group `g` (the group stays in `turn` only while it has more).
    fn take_from(&mut self, g: &str) -> Option<Event> {
        let queue = self.groups.get_mut(g)?;
        let subject = queue.pop_front()?;
        if queue.is_empty() {
            self.groups.remove(g);
            self.turn.retain(|t| t != g);
        }
        self.events.remove(&subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(subject: &str, reason: &'static str) -> Event {
        Event::now("credential.rejected", subject.to_owned(), reason)
    }

    #[test]
    fn subjects_are_grouped_by_their_team_or_consumer() {
        assert_eq!(group("credential:payments/partner-api"), "payments");
        assert_eq!(group("payments/partner-api:client_certificate"), "payments");
        assert_eq!(group("consumer_pin:gw/ab12"), "gw");
        assert_eq!(group("server:server"), "server");
    }

    /// Issue 43: one team's burst (thousands of events, or one subject re-raised in a loop)
    /// neither crowds out nor delays another team's first event; a subject is one pending
    /// event, the newest.
    #[test]
    fn one_teams_burst_delays_no_other_teams_first_event() {
        let q = Queue::new(100);
        for i in 0..10_000 {
            q.push(ev(
                &format!("fraud/c{}:client_certificate", i % 500),
                "expired",
            ));
        }
        q.push(ev("payments/api:client_certificate", "first"));
        q.push(ev("payments/api:client_certificate", "newest"));
        let first = q.try_next().unwrap();
        let second = q.try_next().unwrap();
        let payments: Vec<&Event> = [&first, &second]
            .into_iter()
            .filter(|e| e.subject.starts_with("payments/"))
            .collect();
        assert_eq!(payments.len(), 1, "{first:?} {second:?}");
        assert_eq!(
            payments[0].reason, "newest",
            "one pending per subject, the newest"
        );
        assert!(q.dropped() > 0);
        let mut rest = 0;
        while let Some(e) = q.try_next() {
            assert!(!e.subject.starts_with("payments/"), "payments' event twice");
            rest += 1;
        }
        assert!(rest < 100);
    }
}
