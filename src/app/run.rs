//! The running server: every listener bound before anything is served, one connection gate
//! for the whole process (`[limits]` count all doors together), one stop for all. `main.rs`
//! only announces (banner, systemd) and waits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::Listener;
use crate::api::{self, AppState, ServerTls};
use crate::door::listen::{ConnectionLimits, Gate};

/// A listener that could not be bound, named by its setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting} cannot listen on {addr}: {source}")]
pub(crate) struct BindError {
    pub setting: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Every listener of a server, bound.
pub(crate) struct Listeners {
    main: TcpListener,
    main_addr: SocketAddr,
    ops: Option<TcpListener>,
    doors: Vec<(Listener, TcpListener)>,
    /// Where each listener listens, by name (`listen`, `ops_listen`, `vault_api`, `egress`).
    addresses: Vec<(&'static str, SocketAddr)>,
}

async fn bind(setting: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        setting: setting.to_owned(),
        addr,
        source,
    })
}

impl Listeners {
    /// Binds the main listener at `main`, the ops listener and each door, in that order.
    pub(crate) async fn bind(
        main: SocketAddr,
        ops: Option<SocketAddr>,
        doors: impl IntoIterator<Item = Option<Listener>>,
    ) -> Result<Self, BindError> {
        let main_listener = bind("[server] listen", main).await?;
        let main_addr = main_listener.local_addr().map_err(|source| BindError {
            setting: "[server] listen".to_owned(),
            addr: main,
            source,
        })?;
        let ops_addr = ops;
        let ops = match ops {
            Some(at) => Some(bind("[server] ops_listen", at).await?),
            None => None,
        };
        let local = |l: &TcpListener, setting: &str, addr: SocketAddr| {
            l.local_addr().map_err(|source| BindError {
                setting: setting.to_owned(),
                addr,
                source,
            })
        };
        let mut addresses = vec![("listen", main_addr)];
        if let (Some(l), Some(at)) = (&ops, ops_addr) {
            addresses.push(("ops_listen", local(l, "[server] ops_listen", at)?));
        }
        let mut bound = Vec::new();
        for door in doors.into_iter().flatten() {
            let name = door.door.name();
            let setting = format!("[{name}]");
            let listener = bind(&setting, door.listen).await?;
            let at = local(&listener, &setting, door.listen)?;
            addresses.push((name, at));
            bound.push((door, listener));
        }
        Ok(Self {
            main: main_listener,
            main_addr,
            ops,
            doors: bound,
            addresses,
        })
    }

    /// Where each listener listens (the real ports when the configuration said 0).
    pub(crate) fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        self.addresses.clone()
    }

    /// Where the main listener listens (the port when it was 0).
    pub(crate) fn main_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// Serves every door until `stop` completes, then waits for each to drain.
    pub(crate) async fn serve(
        self,
        tls: Arc<ServerTls>,
        state: Arc<AppState>,
        limits: &ConnectionLimits,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        let gate = Gate::new(limits);
        let (tell, told) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = tell.send(true);
        });
        let until_stopped = || {
            let mut rx = told.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut all = tokio::task::JoinSet::new();
        for (door, listener) in self.doors {
            let bound = listener.local_addr().map_or(door.listen, |a| a);
            tracing::info!(door = door.door.name(), %bound, tls = door.tls.is_tls(), "serving");
            all.spawn(crate::door::listen::serve_gated(
                listener,
                door.tls,
                door.router,
                Arc::clone(&gate),
                until_stopped(),
            ));
        }
        if let Some(ops) = self.ops {
            if let Ok(bound) = ops.local_addr() {
                tracing::info!(door = "ops", %bound, "serving");
            }
            all.spawn(crate::door::listen::serve_gated(
                ops,
                Arc::new(ServerTls::plain()),
                api::ops_router(Arc::clone(&state)),
                Arc::clone(&gate),
                until_stopped(),
            ));
        }
        all.spawn(crate::door::listen::serve_gated(
            self.main,
            tls,
            api::router(state),
            gate,
            until_stopped(),
        ));
        while all.join_next().await.is_some() {}
    }
}
