//! The agent's `ops_listen` (docs/AGENT.md): `/healthz`, `/readyz` and `/metrics` over plain
//! HTTP. Nothing here ever holds a value: the state is names from `agent.toml` (credentials,
//! folders, destinations), cause codes from a closed vocabulary, counts and Unix times.
//! Requests are small and answered from memory: headers are capped at 16 KiB, read within
//! 5 s, a body is never read, one request per connection, and at most 32 connections are
//! served at once (more are closed unanswered). THREATS row 86.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::Cause;
use super::config::AgentConfig;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// The most a request's line and headers may take (hyper's smallest buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// A request's head must arrive within this, and the whole exchange end within
/// [`EXCHANGE_TIMEOUT`].
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// `/readyz` is 503 once a certificate has lived this share of its life.
const READY_LIFE_SHARE: f64 = 0.9;

/// Upper bounds (seconds) of the reload duration histogram.
const RELOAD_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    credential: String,
    dir: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What an output or a template is, for the operator.
#[derive(Clone, Debug)]
pub(super) enum Name {
    Output { credential: String, dir: String },
    Template { destination: String },
}

/// One output's or template's health.
#[derive(Clone, Debug)]
struct ItemHealth {
    name: Name,
    /// Its files were written (or found current) by this process at least once.
    written: bool,
    /// The leaf certificate's (`not_before`, `not_after`), Unix seconds.
    validity: Option<(i64, i64)>,
    /// Why its last pass failed; `None` after a pass that did not.
    failing: Option<Cause>,
}

/// The agent's health and metrics, updated by its passes and read by `ops_listen`.
pub(super) struct State {
    registry: Registry,
    items: Mutex<Vec<ItemHealth>>,
    passes: Counter,
    failures: Family<CauseLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    reload_seconds: Histogram,
    reloads_pending: Gauge,
    expiry: Family<OutputLabels, Gauge>,
    output_failing: Family<OutputLabels, Gauge>,
    template_failing: Family<TemplateLabels, Gauge>,
    /// The identity's `not_after` (registered only when the agent presents a certificate).
    identity: Gauge<i64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ops::State")
    }
}

/// Each output's then each template's health (the agent's item indices), none written yet;
/// their `failing` gauges start at 0.
fn items_of(
    cfg: &AgentConfig,
    output_failing: &Family<OutputLabels, Gauge>,
    template_failing: &Family<TemplateLabels, Gauge>,
) -> Vec<ItemHealth> {
    let mut items = Vec::new();
    for o in &cfg.output {
        let labels = OutputLabels {
            credential: o.credential.clone(),
            dir: o.dir.display().to_string(),
        };
        output_failing.get_or_create(&labels).set(0);
        items.push(ItemHealth {
            name: Name::Output {
                credential: labels.credential,
                dir: labels.dir,
            },
            written: false,
            validity: None,
            failing: None,
        });
    }
    for t in &cfg.template {
        let labels = TemplateLabels {
            destination: t.destination.display().to_string(),
        };
        template_failing.get_or_create(&labels).set(0);
        items.push(ItemHealth {
            name: Name::Template {
                destination: labels.destination,
            },
            written: false,
            validity: None,
            failing: None,
        });
    }
    items
}

impl State {
    /// The state of `cfg`'s outputs then templates (in that order: the agent's item indices),
    /// none written yet; the identity's `not_after` when it presents a client certificate.
    pub(super) fn new(cfg: &AgentConfig) -> Self {
        let mut registry = Registry::default();
        let passes = Counter::default();
        let failures = Family::<CauseLabels, Counter>::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let reload_seconds = Histogram::new(RELOAD_BUCKETS);
        let reloads_pending = Gauge::default();
        let expiry = Family::<OutputLabels, Gauge>::default();
        let output_failing = Family::<OutputLabels, Gauge>::default();
        let template_failing = Family::<TemplateLabels, Gauge>::default();
        registry.register(
            "keybroker_agent_passes",
            "Passes over an output or a template (a fetch, and the write and reload it led to), whatever their outcome",
            passes.clone(),
        );
        registry.register(
            "keybroker_agent_failures",
            "Passes that failed, by cause",
            failures.clone(),
        );
        registry.register(
            "keybroker_agent_reloads",
            "Runs of a reload command, by outcome",
            reloads.clone(),
        );
        registry.register(
            "keybroker_agent_reload_duration_seconds",
            "Time a reload command took",
            reload_seconds.clone(),
        );
        registry.register(
            "keybroker_agent_reloads_pending",
            "Reload commands waiting for reload_min_interval (their files are written)",
            reloads_pending.clone(),
        );
        registry.register(
            "keybroker_agent_certificate_expiry_timestamp_seconds",
            "When the certificate of an output's files expires (not_after, Unix seconds)",
            expiry.clone(),
        );
        registry.register(
            "keybroker_agent_output_failing",
            "1 while an output's last pass failed, else 0",
            output_failing.clone(),
        );
        registry.register(
            "keybroker_agent_template_failing",
            "1 while a template's last pass failed, else 0",
            template_failing.clone(),
        );
        let identity = Gauge::<i64>::default();
        if let Some(not_after) = cfg
            .server
            .client_cert
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|pem| super::files::leaf_validity(&pem))
            .map(|(_, not_after)| not_after)
        {
            identity.set(not_after);
            registry.register(
                "keybroker_agent_identity_expiry_timestamp_seconds",
                "When the agent's own client certificate expires (not_after, Unix seconds)",
                identity.clone(),
            );
        }
        let items = items_of(cfg, &output_failing, &template_failing);
        Self {
            registry,
            items: Mutex::new(items),
            passes,
            failures,
            reloads,
            reload_seconds,
            reloads_pending,
            expiry,
            output_failing,
            template_failing,
            identity,
        }
    }

    /// A renewed identity's `not_after`.
    pub(super) fn set_identity_expiry(&self, not_after: i64) {
        self.identity.set(not_after);
    }

    fn with_item(&self, i: usize, f: impl FnOnce(&mut ItemHealth)) -> Option<Name> {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        items.get_mut(i).map(|item| {
            f(item);
            item.name.clone()
        })
    }

    fn set_failing(&self, name: &Name, failing: bool) {
        let v = i64::from(failing);
        match name {
            Name::Output { credential, dir } => {
                self.output_failing
                    .get_or_create(&OutputLabels {
                        credential: credential.clone(),
                        dir: dir.clone(),
                    })
                    .set(v);
            }
            Name::Template { destination } => {
                self.template_failing
                    .get_or_create(&TemplateLabels {
                        destination: destination.clone(),
                    })
                    .set(v);
            }
        }
    }

    /// Item `i`'s files are in place (written now, or found current), with the leaf
    /// certificate's validity when it has one.
    pub(super) fn written(&self, i: usize, validity: Option<(i64, i64)>) {
        let name = self.with_item(i, |item| {
            item.written = true;
            if validity.is_some() {
                item.validity = validity;
            }
        });
        if let (Some(Name::Output { credential, dir }), Some((_, not_after))) = (name, validity) {
            self.expiry
                .get_or_create(&OutputLabels { credential, dir })
                .set(not_after);
        }
    }

    /// The validity `ops_listen` shows for item `i`'s certificate.
    pub(super) fn validity(&self, i: usize) -> Option<(i64, i64)> {
        let items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        items.get(i).and_then(|item| item.validity)
    }

    /// Item `i`'s pass ended well.
    pub(super) fn pass_ok(&self, i: usize) {
        self.passes.inc();
        if let Some(name) = self.with_item(i, |item| item.failing = None) {
            self.set_failing(&name, false);
        }
    }

    /// Item `i`'s pass failed because of `cause`.
    pub(super) fn pass_failed(&self, i: usize, cause: Cause) {
        self.passes.inc();
        self.failures
            .get_or_create(&CauseLabels {
                cause: cause.code(),
            })
            .inc();
        if let Some(name) = self.with_item(i, |item| item.failing = Some(cause)) {
            self.set_failing(&name, true);
        }
    }

    /// A reload command ran for `took` and succeeded or not.
    pub(super) fn reloaded(&self, ok: bool, took: Duration) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "failed" },
            })
            .inc();
        self.reload_seconds.observe(took.as_secs_f64());
    }

    /// How many reload commands wait for `reload_min_interval`.
    pub(super) fn pending(&self, n: usize) {
        self.reloads_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    fn render(&self) -> String {
        use prometheus_client::encoding::text::encode;
        let mut out = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Whether every output and template is written and no certificate is past 90 % of its
    /// life, at `now` (Unix seconds); each item's state says why not.
    fn readiness(&self, now: i64) -> Readiness {
        let items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ready = true;
        let mut outputs = Vec::new();
        let mut templates = Vec::new();
        for item in items.iter() {
            let why = if !item.written {
                Some("not_written")
            } else if let Some((not_before, not_after)) = item.validity
                && past_share(now, not_before, not_after, READY_LIFE_SHARE)
            {
                Some(if now >= not_after {
                    "expired"
                } else {
                    "past_90_percent_of_life"
                })
            } else {
                None
            };
            ready &= why.is_none();
            let state = ItemReadiness {
                ready: why.is_none(),
                why,
                last_failure: item.failing.map(Cause::code),
                not_after: item.validity.map(|(_, a)| a),
            };
            match &item.name {
                Name::Output { credential, dir } => outputs.push(OutputReadiness {
                    credential: credential.clone(),
                    dir: dir.clone(),
                    state,
                }),
                Name::Template { destination } => templates.push(TemplateReadiness {
                    destination: destination.clone(),
                    state,
                }),
            }
        }
        Readiness {
            ready,
            outputs,
            templates,
        }
    }
}

/// Whether `now` is past `share` of the life from `not_before` to `not_after`.
fn past_share(now: i64, not_before: i64, not_after: i64, share: f64) -> bool {
    let life = (not_after - not_before).max(0) as f64;
    now as f64 >= not_before as f64 + life * share
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    outputs: Vec<OutputReadiness>,
    templates: Vec<TemplateReadiness>,
}

#[derive(Serialize)]
struct OutputReadiness {
    credential: String,
    dir: String,
    #[serde(flatten)]
    state: ItemReadiness,
}

#[derive(Serialize)]
struct TemplateReadiness {
    destination: String,
    #[serde(flatten)]
    state: ItemReadiness,
}

#[derive(Serialize)]
struct ItemReadiness {
    ready: bool,
    /// Why not ready: `not_written`, `past_90_percent_of_life`, `expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'static str>,
    /// The cause of the last pass when it failed (the files in place stay in use).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failure: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<i64>,
}

fn router(state: Arc<State>) -> Router {
    let ready = Arc::clone(&state);
    let metrics = state;
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"status\":\"ok\"}",
                )
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let r = ready.readiness(super::now_unix());
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::to_string(&r).unwrap_or_default();
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    metrics.render(),
                )
                    .into_response()
            }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND })
}

/// Binds `addr` (before any pass, so a taken port fails the start).
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends.
pub(super) async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ops_listen: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, client_cert: Option<&str>) -> AgentConfig {
        let cert = client_cert.map_or(String::new(), |c| {
            std::fs::write(dir.join("id.pem"), c).unwrap();
            std::fs::write(dir.join("id-key.pem"), "unused").unwrap();
            "client_cert = \"id.pem\"\nclient_key = \"id-key.pem\"\n".to_owned()
        });
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nurl = \"https://kb\"\n{cert}\n[[output]]\ncredential = \"partner-api\"\nhost = \"h\"\ndir = \"certs\"\n[[template]]\nsource = \"a.in\"\ndestination = \"a.conf\"\nhost = \"h\"\n"
            ),
        )
        .unwrap();
        AgentConfig::load(&path).unwrap()
    }

    /// Not ready until every item is written; then not ready again once a certificate is
    /// past 90 % of its life (and says which and why); a failed pass shows but does not
    /// take the files in place out of service.
    #[test]
    fn readiness_says_which_output_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(&config(dir.path(), None));
        let r = s.readiness(1000);
        assert!(!r.ready);
        assert_eq!(r.outputs[0].state.why, Some("not_written"));
        assert_eq!(r.templates[0].state.why, Some("not_written"));
        s.pass_failed(0, Cause::Refused);
        let body = serde_json::to_string(&s.readiness(1000)).unwrap();
        assert!(body.contains("\"last_failure\":\"refused\""), "{body}");
        assert!(body.contains("\"credential\":\"partner-api\""), "{body}");
        s.written(0, Some((0, 1000)));
        s.written(1, None);
        s.pass_ok(0);
        s.pass_ok(1);
        assert!(s.readiness(899).ready);
        let r = s.readiness(900);
        assert!(!r.ready);
        assert_eq!(r.outputs[0].state.why, Some("past_90_percent_of_life"));
        assert_eq!(r.outputs[0].state.not_after, Some(1000));
        assert!(r.templates[0].state.ready);
        assert_eq!(s.readiness(1000).outputs[0].state.why, Some("expired"));
        s.pass_failed(0, Cause::Unreachable);
        s.written(0, Some((1000, 2000)));
        let r = s.readiness(1100);
        assert!(
            r.ready,
            "a failing pass keeps the files in place in service"
        );
        assert_eq!(r.outputs[0].state.last_failure, Some("unreachable"));
        let text = s.render();
        for line in [
            "keybroker_agent_failures_total{cause=\"refused\"} 1",
            "keybroker_agent_failures_total{cause=\"unreachable\"} 1",
            "keybroker_agent_passes_total 4",
            "keybroker_agent_output_failing{credential=\"partner-api\",dir=",
            "keybroker_agent_certificate_expiry_timestamp_seconds{credential=\"partner-api\",dir=",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("identity"), "{text}");
    }

    /// With a client certificate, its `not_after` is exported.
    #[test]
    fn the_identitys_not_after_is_exported() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["agent".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(&config(dir.path(), Some(&pem)));
        let text = s.render();
        let at = time_2031_01_02();
        assert!(
            text.contains(&format!(
                "keybroker_agent_identity_expiry_timestamp_seconds {at}"
            )),
            "{text}"
        );
    }

    /// An `ops_listen` serving an agent with one output and one template.
    async fn serving() -> (u16, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::new(&config(dir.path(), None)));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, state));
        (port, dir)
    }

    /// Writes `bytes` and reads the answer until the server closes; what was read (a reset
    /// after an early answer is an answer too).
    async fn exchange(port: u16, bytes: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), read)
            .await
            .expect("answered and closed within 3 s");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The ops listener is no place to spend the agent's memory: a huge head is refused
    /// (431) once it passes 16 KiB, garbage is 400, a body is never read (a POST announcing
    /// 10 GB is 405 at once), a request that never ends its head is dropped, and
    /// connections past the cap are closed unanswered — and it still answers afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_and_malformed_requests_are_refused_cheaply() {
        let (port, _dir) = serving().await;
        let ok = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("connection: close"),
            "one request per connection: {ok}"
        );

        let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        // Past the 16 KiB cap, well under hyper's default (about 400 KiB).
        huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
        huge.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(port, &huge).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );

        let answer = exchange(
            port,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

        let answer = exchange(
            port,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\npartial",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

        let answer = exchange(port, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

        // A head that never ends: dropped after the head timeout, not held.
        {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let closed = tokio::time::timeout(HEAD_TIMEOUT * 2, s.read(&mut buf)).await;
            assert!(closed.is_ok(), "a slow head is held open");
        }

        // Past the cap, connections are closed at once, unanswered.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
        }
        // Let the listener admit them.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if answer.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a connection past the cap was answered: {answer}"
            );
        }
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer after the held connections closed"
            );
        }
    }

    fn time_2031_01_02() -> i64 {
        // 2031-01-02T00:00:00Z
        1_925_078_400
    }
}
