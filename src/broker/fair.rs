//! A source's read permits, shared fairly between teams (THREATS row 45). A team may hold at
//! most `cap` of a source's `source_concurrency` permits while another team waits for one; a
//! team alone may use them all. A freed permit goes to the waiting team holding the fewest,
//! so one team's thousand queued reads never stand between another team and the source.
//! Background reads (refresh ahead) and the operator count as their own team.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug)]
pub(crate) struct FairPermits {
    total: usize,
    cap: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_use: usize,
    /// Per team: permits held and readers waiting (in arrival order).
    teams: Vec<Team>,
}

#[derive(Debug)]
struct Team {
    name: Arc<str>,
    held: usize,
    waiting: VecDeque<oneshot::Sender<()>>,
}

/// A held permit; dropping it hands it on.
#[derive(Debug)]
pub(crate) struct FairPermit {
    permits: Arc<FairPermits>,
    team: Arc<str>,
}

impl FairPermits {
    /// `total` permits; one team holds at most `share` of them while others wait (at least
    /// one).
    pub(crate) fn new(total: usize, share: f64) -> Arc<Self> {
        let total = total.max(1);
        // `share` is validated to (0, 1]; the product is at most `total`.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a share of a small count, rounded up, then clamped to 1..=total"
        )]
        let cap = ((total as f64 * share).ceil() as usize).clamp(1, total);
        Arc::new(Self {
            total,
            cap,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn acquire(self: &Arc<Self>, team: &str) -> FairPermit {
        loop {
            let rx = {
                let mut st = self.lock();
                let i = st.team(team);
                let others_wait = st
                    .teams
                    .iter()
                    .enumerate()
                    .any(|(j, t)| j != i && !t.waiting.is_empty());
                let t = &st.teams[i];
                if st.in_use < self.total
                    && t.waiting.is_empty()
                    && (t.held < self.cap || !others_wait)
                {
                    st.take(i);
                    return self.permit(&st.teams[i].name);
                }
                let (tx, rx) = oneshot::channel();
                st.teams[i].waiting.push_back(tx);
                Waiting {
                    rx: Some(rx),
                    permits: Arc::clone(self),
                    team: Arc::clone(&st.teams[i].name),
                }
            };
            if let Some(permit) = rx.granted().await {
                return permit;
            }
        }
    }

    fn permit(self: &Arc<Self>, team: &Arc<str>) -> FairPermit {
        FairPermit {
            permits: Arc::clone(self),
            team: Arc::clone(team),
        }
    }

    /// Gives a permit back and hands it to the waiting team holding the fewest.
    fn release(&self, team: &str) {
        let mut st = self.lock();
        if let Some(i) = st.teams.iter().position(|t| &*t.name == team) {
            st.teams[i].held -= 1;
            st.in_use -= 1;
        }
        while st.in_use < self.total {
            let next = st
                .teams
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.waiting.is_empty())
                .min_by_key(|(_, t)| t.held)
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let Some(tx) = st.teams[i].waiting.pop_front() else {
                break;
            };
            st.take(i);
            if tx.send(()).is_err() {
                // That reader gave up waiting: the permit goes to the next.
                st.teams[i].held -= 1;
                st.in_use -= 1;
            } else {
                break;
            }
        }
        // Teams holding nothing and waiting for nothing are forgotten.
        st.teams.retain(|t| t.held > 0 || !t.waiting.is_empty());
    }
}

impl State {
    fn team(&mut self, name: &str) -> usize {
        match self.teams.iter().position(|t| &*t.name == name) {
            Some(i) => i,
            None => {
                self.teams.push(Team {
                    name: Arc::from(name),
                    held: 0,
                    waiting: VecDeque::new(),
                });
                self.teams.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) {
        self.teams[i].held += 1;
        self.in_use += 1;
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.permits.release(&self.team);
    }
}

/// A reader in a team's queue. Dropped before it saw its grant (its request was cancelled
/// just as the permit came), it gives the permit back instead of losing it.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    permits: Arc<FairPermits>,
    team: Arc<str>,
}

impl Waiting {
    /// The permit, or `None` when the grant was withdrawn (try again).
    async fn granted(mut self) -> Option<FairPermit> {
        let rx = self.rx.as_mut()?;
        let got = rx.await.is_ok();
        self.rx = None;
        got.then(|| self.permits.permit(&self.team))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take()
            && rx.try_recv().is_ok()
        {
            self.permits.release(&self.team);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_team_alone_uses_every_permit() {
        let p = FairPermits::new(4, 0.5);
        let held: Vec<_> = futures_all(&p, "a", 4).await;
        assert_eq!(held.len(), 4);
        assert_eq!(p.lock().in_use, 4);
        drop(held);
        assert_eq!(p.lock().in_use, 0);
        assert!(p.lock().teams.is_empty());
    }

    async fn futures_all(p: &Arc<FairPermits>, team: &str, n: usize) -> Vec<FairPermit> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(p.acquire(team).await);
        }
        out
    }

    #[tokio::test]
    async fn a_freed_permit_goes_to_the_team_holding_the_fewest() {
        let p = FairPermits::new(4, 0.5);
        let mut a = futures_all(&p, "a", 4).await;
        // `a` queues 10 more, then `b` asks for one.
        let mut queued = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let p = Arc::clone(&p);
            queued.spawn(async move { p.acquire("a").await });
        }
        tokio::task::yield_now().await;
        let pb = Arc::clone(&p);
        let b = tokio::spawn(async move { pb.acquire("b").await });
        // Let every waiter reach its queue.
        while p
            .lock()
            .teams
            .iter()
            .map(|t| t.waiting.len())
            .sum::<usize>()
            < 11
        {
            tokio::task::yield_now().await;
        }
        drop(a.pop());
        let b = b.await.unwrap();
        assert_eq!(&*b.team, "b", "b was served before a's ten");
        // While b waits no more, a's queue drains as permits free up.
        drop(a);
        drop(b);
        let mut n = 0;
        while let Some(done) = queued.join_next().await {
            drop(done.unwrap());
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(p.lock().in_use, 0);
    }

    #[tokio::test]
    async fn a_team_at_its_cap_waits_while_another_waits() {
        let p = FairPermits::new(4, 0.5);
        let _a = futures_all(&p, "a", 2).await;
        // `b` fills the other two; `a` asks again: 2 held = its cap, `b` waiting → queued.
        let _b = futures_all(&p, "b", 2).await;
        let pb = Arc::clone(&p);
        let b3 = tokio::spawn(async move { pb.acquire("b").await });
        while p.lock().teams.iter().all(|t| t.waiting.is_empty()) {
            tokio::task::yield_now().await;
        }
        let pa = Arc::clone(&p);
        let a3 = tokio::spawn(async move { pa.acquire("a").await });
        tokio::task::yield_now().await;
        drop(_a);
        // Both freed permits: b3 and a3 each get one.
        let (a3, b3) = (a3.await.unwrap(), b3.await.unwrap());
        assert_eq!((&*a3.team, &*b3.team), ("a", "b"));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_loses_no_permit() {
        let p = FairPermits::new(1, 1.0);
        let held = p.acquire("a").await;
        let pb = Arc::clone(&p);
        let waiter = tokio::spawn(async move { pb.acquire("b").await });
        while p.lock().teams.iter().all(|t| t.waiting.is_empty()) {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(p.lock().in_use, 0);
        let again = p.acquire("c").await;
        assert_eq!(&*again.team, "c");
    }
}
