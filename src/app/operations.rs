//! What a running server does on its own, started in one place by `serve` and by nothing
//! else — no constructor starts a task behind anyone's back (issue 45): the broker's
//! (sources' token renewal, the store's login, cache maintenance, the start-of-service audit
//! line, start-up and self checks, the expiry sweep), the management store's poll and orphan
//! sweep, the egress pool's keeper, and the reload on SIGHUP.

use std::sync::Arc;

use crate::api::AppState;
use crate::broker::Broker;
use crate::config::{Config, StoreKind};

/// What [`start`] starts, gathered while the app is built.
#[derive(Debug)]
pub struct Operations {
    broker: Arc<Broker>,
    /// `[store] poll` and `stale_after` (a vault store), `orphan_grace` (any store).
    store: Option<StoreTimes>,
    egress_pool: Option<Arc<crate::egress::Pool>>,
}

#[derive(Debug)]
struct StoreTimes {
    poll: Option<(std::time::Duration, std::time::Duration)>,
    orphan_grace: std::time::Duration,
}

impl Operations {
    pub(super) fn new(
        broker: &Arc<Broker>,
        config: &Config,
        egress_pool: Option<Arc<crate::egress::Pool>>,
    ) -> Self {
        Self {
            broker: Arc::clone(broker),
            store: config.store.as_ref().map(|st| StoreTimes {
                poll: (st.kind == StoreKind::Vault).then_some((st.poll.0, st.stale_after.0)),
                orphan_grace: st.orphan_grace.0,
            }),
            egress_pool,
        }
    }
}

/// Starts everything of `operations`, for the server whose state is `state`. Call once, from
/// within the runtime that serves.
pub async fn start(operations: Operations, state: &Arc<AppState>) {
    let Operations {
        broker,
        store,
        egress_pool,
    } = operations;
    broker.start().await;
    if let Some(times) = store {
        if let Some((poll, stale_after)) = times.poll {
            state.manager.spawn_store_poll(poll, stale_after);
        }
        state.manager.spawn_orphan_sweep(times.orphan_grace);
    }
    if let Some(pool) = &egress_pool {
        crate::egress::Pool::spawn_keeper(pool, broker.changes());
    }
    super::process::spawn_reload_on_sighup(Arc::clone(state));
}
