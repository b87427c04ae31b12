//! The listener: TLS (rustls, TLS 1.2/1.3, client certificates optional or required; the
//! settings in [`ServerTls`], reloadable) or plain HTTP (loopback or `--dev` only — `main.rs` enforces that), an accept loop that hands each
//! connection's [`Peer`] to the handlers, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::tls::ServerTls;
use crate::identity::ClientCert;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client certificate the TLS handshake verified against `client_ca` (end entity),
    /// parsed once for the life of the connection.
    pub certificate: Option<Arc<ClientCert>>,
}

/// A TLS handshake that takes longer is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is asked for, open requests get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What all clients together, and one peer address, may hold open, and how long an answer
/// may wait for its client (`[limits]`; THREATS row 26).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max: usize,
    pub per_ip: usize,
    pub write_timeout: Duration,
}

impl From<&crate::config::LimitsConfig> for ConnectionLimits {
    fn from(l: &crate::config::LimitsConfig) -> Self {
        Self {
            max: l.max_connections,
            per_ip: l.max_connections_per_ip,
            write_timeout: l.write_timeout.0,
        }
    }
}

/// Admission of connections: a slot of the total and one of the peer's. One gate serves
/// every listener of a process, so `[limits]` count the process's connections, not each
/// listener's (one address cannot hold the per-address limit once per door).
#[derive(Debug)]
pub(crate) struct Gate {
    total: Arc<tokio::sync::Semaphore>,
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    limit_per_ip: usize,
    write_timeout: Duration,
}

/// An admitted connection; dropping it gives both slots back.
struct Slot {
    gate: Arc<Gate>,
    ip: std::net::IpAddr,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl Gate {
    pub(crate) fn new(limits: &ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(tokio::sync::Semaphore::new(limits.max.max(1))),
            per_ip: std::sync::Mutex::default(),
            limit_per_ip: limits.per_ip.max(1),
            write_timeout: limits.write_timeout,
        })
    }

    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let total = Arc::clone(&self.total).try_acquire_owned().ok()?;
        let mut peers = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = peers.entry(ip).or_default();
        if *open >= self.limit_per_ip {
            return None;
        }
        *open += 1;
        Some(Slot {
            gate: Arc::clone(self),
            ip,
            _total: total,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut peers = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = peers.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` alone, with its own gate for `limits` (tests and benches).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_gated(listener, tls, app, Gate::new(&limits), shutdown).await;
}

/// Serves `app` on `listener`, admitting connections through `gate` (shared by every
/// listener of the process), until `shutdown` completes; then lets open connections finish
/// (up to 30 s).
pub(crate) async fn serve_gated(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    app: Router,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over a limit the connection is closed at once: a flood of silent connections costs
        // one descriptor each for a moment, and never the other clients' service.
        let Some(slot) = gate.enter(addr.ip()) else {
            tracing::debug!(%addr, "connection refused: connection limit reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // An answer the client does not take is dropped after `write_timeout`, with the
        // memory it holds.
        let mut tcp = tokio_io_timeout::TimeoutStream::new(tcp);
        tcp.set_write_timeout(Some(gate.write_timeout));
        let tcp = Box::pin(tcp);
        let app = app.clone();
        // The settings current now; a reload during this connection does not touch it.
        let tls = tls.current().acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .to_owned();
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        certificate: None,
                    };
                    let conn = http.serve_connection(TokioIo::new(tcp), with_peer(app, peer));
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%addr, "TLS handshake timed out");
                                return;
                            }
                        };
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(ClientCert::new(c.clone().into_owned())));
                    let peer = Peer { addr, certificate };
                    let conn = http.serve_connection(TokioIo::new(stream), with_peer(app, peer));
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in time; closing them");
    }
}

/// The connection's service: each request gets the [`Peer`] as an extension, then goes to the
/// router. (Not `Router::layer(Extension(…))`, which would wrap every route once more for each
/// connection, and clone that wrapping on every request.)
fn with_peer(
    app: Router,
    peer: Peer,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer.clone());
        tower_service::Service::call(&mut app.clone(), request)
    })
}
