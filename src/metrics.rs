//! What `/metrics` reports, on `prometheus-client`: one typed label set per series, label
//! values from closed vocabularies (route templates, outcome codes, repair kinds) or
//! configuration names (sources, credentials, consumers) — never a value, a path the caller
//! typed, or a host. Updates take a shared read lock on the series' family, no mutex.

mod process;

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the source latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The content type of [`Metrics::render`].
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A closed vocabulary used as a label value: encoded as its `code()`.
macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $code:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub(crate) enum $name { $($variant),+ }

        impl $name {
            pub(crate) fn code(self) -> &'static str {
                match self { $(Self::$variant => $code),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.code())
            }
        }
    };
}

vocabulary! {
    /// How an HTTP request ended, by status class.
    RequestOutcome {
        Ok => "ok",
        Unauthenticated => "unauthenticated",
        Denied => "denied",
        NotFound => "not_found",
        Rejected => "rejected",
        Failed => "failed",
    }
}

impl RequestOutcome {
    pub(crate) fn of_status(status: u16) -> Self {
        match status {
            200..=399 => Self::Ok,
            401 | 407 => Self::Unauthenticated,
            403 => Self::Denied,
            404 => Self::NotFound,
            400..=499 => Self::Rejected,
            _ => Self::Failed,
        }
    }
}

vocabulary! {
    /// Whether a secret was in the cache.
    CacheResult { Hit => "hit", Miss => "miss" }
}

vocabulary! {
    /// How a policy reload ended.
    ReloadOutcome { Ok => "ok", Rejected => "rejected" }
}

vocabulary! {
    /// What a certificate whose expiry is exported belongs to (docs/DESIGN.md §15).
    ExpiryKind {
        Credential => "credential",
        ConsumerPin => "consumer_pin",
        IssuerCa => "issuer_ca",
        Server => "server",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// `api`, `vault_api`, `egress`, `ops`: which door the request came through.
    door: &'static str,
    route: &'static str,
    decision: RequestOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReadLabels {
    source: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    kind: ExpiryKind,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: ExpiryKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    door: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Everything `/metrics` reports. Cheap to update from any task.
pub(crate) struct Metrics {
    registry: Registry,
    /// Series that name teams' credentials and consumers: the main listener's `/metrics`
    /// (admins) has them, `ops_listen` (anyone who reaches it) does not.
    named: Registry,
    /// The earliest `not_after` of each kind, without names: what `ops_listen` shows instead.
    earliest: Family<KindLabels, Gauge>,
    expiries: std::sync::Mutex<std::collections::HashMap<(ExpiryKind, String), i64>>,
    requests: Family<RequestLabels, Counter>,
    source_reads: Family<SourceReadLabels, Counter>,
    /// Misses only; hits never reach a source.
    source_latency: Family<SourceLabels, Histogram, fn() -> Histogram>,
    /// The two series of `keybroker_cache_requests_total`, held directly: a hit is the hot
    /// path, and needs no label lookup.
    cache_hits: Counter,
    cache_misses: Counter,
    repairs: Family<RepairLabels, Counter>,
    rejections: Family<RejectionLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    expiry: Family<ExpiryLabels, Gauge>,
    source_up: Family<SourceLabels, Gauge>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    process: process::ProcessGauges,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    stale_answers: Counter,
    audit_failures: Counter,
    /// Certificates refused because two consumers claim them.
    ambiguous_identities: Counter,
    /// Store entries the last policy load set aside.
    quarantined: Gauge,
    /// When a shared store was last pulled successfully (Unix seconds).
    store_pulled: Gauge,
    token_ttl: Family<SourceLabels, Gauge>,
}

impl Default for Metrics {
    // Long by nature: one registration (name, help, family) per series, in /metrics order — a
    // list to read down, with no branch to follow.
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        let source_reads = Family::default();
        let source_latency =
            Family::<SourceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let cache: Family<CacheLabels, Counter> = Family::default();
        let repairs = Family::default();
        let rejections = Family::default();
        let reloads = Family::default();
        let expiry = Family::default();
        let source_up = Family::default();
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let process = process::ProcessGauges::default();
        process.register(&mut registry);
        let cache_entries = Gauge::default();
        let cache_bytes = Gauge::default();
        let stale_answers = Counter::default();
        let audit_failures = Counter::default();
        let ambiguous_identities = Counter::default();
        let quarantined = Gauge::default();
        let store_pulled = Gauge::default();
        let token_ttl = Family::default();
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("KEYBROKER_COMMIT"),
            })
            .set(1);
        registry.register(
            "keybroker_build_info",
            "The running version and the commit it was built from (always 1)",
            build,
        );
        registry.register(
            "keybroker_request_duration_seconds",
            "Time to answer a request, by route (blocking queries include their wait)",
            Family::clone(&request_seconds),
        );
        registry.register(
            "keybroker_cache_entries",
            "Secrets (and remembered not-founds) in the cache",
            Gauge::clone(&cache_entries),
        );
        registry.register(
            "keybroker_cache_bytes",
            "Approximate bytes the cache's entries hold (what max_bytes counts)",
            Gauge::clone(&cache_bytes),
        );
        registry.register(
            "keybroker_stale_answers",
            "Reads answered from a stale entry because the source was unavailable",
            Counter::clone(&stale_answers),
        );
        registry.register(
            "keybroker_audit_write_failures",
            "Audit lines that could not be written",
            Counter::clone(&audit_failures),
        );
        registry.register(
            "keybroker_ambiguous_identities",
            "Client certificates refused because more than one consumer claims them",
            Counter::clone(&ambiguous_identities),
        );
        registry.register(
            "keybroker_store_entries_quarantined",
            "Management store entries the last policy load set aside (a policy file defines the name, or the entry conflicts)",
            Gauge::clone(&quarantined),
        );
        registry.register(
            "keybroker_store_last_pull_timestamp_seconds",
            "When this replica last pulled the shared store successfully (Unix seconds)",
            Gauge::clone(&store_pulled),
        );
        registry.register(
            "keybroker_vault_token_ttl_seconds",
            "Time left on a Vault source's login token",
            Family::clone(&token_ttl),
        );
        registry.register(
            "keybroker_requests",
            "Requests by route and decision",
            Family::clone(&requests),
        );
        registry.register(
            "keybroker_source_reads",
            "Source reads (cache misses) by outcome",
            Family::clone(&source_reads),
        );
        registry.register(
            "keybroker_source_read_seconds",
            "Latency of source reads, retries included",
            Family::clone(&source_latency),
        );
        registry.register(
            "keybroker_cache_requests",
            "Secret cache lookups by result",
            Family::clone(&cache),
        );
        registry.register(
            "keybroker_pem_repairs",
            "PEM fields repaired, by kind of repair",
            Family::clone(&repairs),
        );
        registry.register(
            "keybroker_credential_rejections",
            "Credentials refused by verification, by code, once per change of verdict (no names)",
            Family::clone(&rejections),
        );
        registry.register(
            "keybroker_policy_reloads",
            "Policy reloads by outcome",
            Family::clone(&reloads),
        );
        let mut named = Registry::default();
        named.register(
            "keybroker_certificate_expiry_timestamp_seconds",
            "When a certificate keybroker knows expires (not_after, Unix seconds)",
            Family::clone(&expiry),
        );
        let earliest = Family::<KindLabels, Gauge>::default();
        registry.register(
            "keybroker_certificate_expiry_earliest_timestamp_seconds",
            "The earliest not_after among the certificates of a kind keybroker knows (Unix seconds)",
            Family::clone(&earliest),
        );
        registry.register(
            "keybroker_source_available",
            "1 while a source takes reads (circuit closed), 0 while its circuit is open",
            Family::clone(&source_up),
        );
        let cache_hits = cache
            .get_or_create(&CacheLabels {
                result: CacheResult::Hit,
            })
            .clone();
        let cache_misses = cache
            .get_or_create(&CacheLabels {
                result: CacheResult::Miss,
            })
            .clone();
        Self {
            registry,
            named,
            earliest,
            expiries: std::sync::Mutex::default(),
            source_up,
            cache_hits,
            cache_misses,
            requests,
            source_reads,
            source_latency,
            repairs,
            rejections,
            reloads,
            expiry,
            request_seconds,
            process,
            cache_entries,
            cache_bytes,
            stale_answers,
            audit_failures,
            ambiguous_identities,
            quarantined,
            store_pulled,
            token_ttl,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn request(
        &self,
        door: &'static str,
        route: &'static str,
        decision: RequestOutcome,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                door,
                route,
                decision,
            })
            .inc();
    }

    /// How long a request to `route` of `door` took to answer.
    pub(crate) fn request_duration(&self, door: &'static str, route: &'static str, took: Duration) {
        self.request_seconds
            .get_or_create(&RouteLabels { door, route })
            .observe(took.as_secs_f64());
    }

    /// The cache's size now (set before each exposition).
    /// The `process_*` series, read now (at scrape time).
    pub(crate) fn update_process(&self) {
        self.process.update();
    }

    pub(crate) fn cache_size(&self, entries: u64, bytes: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A read answered from a stale entry (stale-if-error).
    pub(crate) fn stale_answer(&self) {
        self.stale_answers.inc();
    }

    /// An audit line that could not be written.
    pub(crate) fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// A shared store was pulled successfully now.
    pub(crate) fn store_pulled(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.store_pulled.set(now);
    }

    /// How many store entries the policy in force set aside.
    pub(crate) fn quarantined(&self, n: usize) {
        self.quarantined.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A client certificate refused because two consumers claim it.
    pub(crate) fn ambiguous_identity(&self) {
        self.ambiguous_identities.inc();
    }

    /// Time left on `source`'s Vault token; `None` removes the series (no expiring token).
    pub(crate) fn token_ttl(&self, source: &str, left: Option<Duration>) {
        let labels = SourceLabels {
            source: source.to_owned(),
        };
        match left {
            Some(d) => {
                self.token_ttl
                    .get_or_create(&labels)
                    .set(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            }
            None => {
                self.token_ttl.remove(&labels);
            }
        }
    }

    /// One read of `source` (a cache miss), `outcome` = `ok` or a reason code.
    pub(crate) fn source_read(&self, source: &str, outcome: &'static str, took: Duration) {
        self.source_reads
            .get_or_create(&SourceReadLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc();
        self.source_latency
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// A PEM field repaired; `kind` is a repair code (`pem::RepairKind::code`).
    pub(crate) fn repaired(&self, kind: &'static str) {
        self.repairs.get_or_create(&RepairLabels { kind }).inc();
    }

    /// A credential's verdict became a refusal; `code` is a verification or PEM code.
    pub(crate) fn credential_rejected(&self, code: &'static str) {
        self.rejections
            .get_or_create(&RejectionLabels { code })
            .inc();
    }

    pub(crate) fn reload(&self, outcome: ReloadOutcome) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// Whether `source` takes reads (its circuit is closed).
    pub(crate) fn source_available(&self, source: &str, available: bool) {
        self.source_up
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .set(i64::from(available));
    }

    /// Sets when the certificate `name` of `kind` expires (Unix seconds).
    pub(crate) fn certificate_expiry(&self, kind: ExpiryKind, name: &str, not_after: i64) {
        self.expiry
            .get_or_create(&ExpiryLabels {
                kind,
                name: name.to_owned(),
            })
            .set(not_after);
        self.set_earliest(kind, Some((name, not_after)), None);
    }

    /// Drops the series of a certificate that is gone (its object left the policy).
    pub(crate) fn forget_certificate(&self, kind: ExpiryKind, name: &str) {
        self.expiry.remove(&ExpiryLabels {
            kind,
            name: name.to_owned(),
        });
        self.set_earliest(kind, None, Some(name));
    }

    /// Keeps the unnamed earliest-expiry series of `kind` in step with the named ones.
    fn set_earliest(&self, kind: ExpiryKind, set: Option<(&str, i64)>, forget: Option<&str>) {
        let mut all = self
            .expiries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((name, at)) = set {
            all.insert((kind, name.to_owned()), at);
        }
        if let Some(name) = forget {
            all.remove(&(kind, name.to_owned()));
        }
        match all
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, at)| *at)
            .min()
        {
            Some(at) => {
                self.earliest.get_or_create(&KindLabels { kind }).set(at);
            }
            None => {
                self.earliest.remove(&KindLabels { kind });
            }
        }
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]) with every series, names included:
    /// for the operator and admins.
    pub(crate) fn render(&self) -> String {
        self.render_with(true)
    }

    /// The exposition without the series that name teams' credentials and consumers: for
    /// `ops_listen`, which answers anyone who reaches it.
    pub(crate) fn render_unnamed(&self) -> String {
        self.render_with(false)
    }

    fn render_with(&self, named: bool) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        if named {
            let _ = encode_registry(&mut out, &self.named);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ops_listen`'s exposition names no team's credential or consumer: the named expiry
    /// series are the admins', an unnamed earliest-per-kind stands in for them.
    #[test]
    fn the_unnamed_exposition_names_no_credential_or_consumer() {
        let m = Metrics::default();
        m.certificate_expiry(
            ExpiryKind::Credential,
            "fraud-secret-project",
            1_900_000_000,
        );
        m.certificate_expiry(ExpiryKind::Credential, "payments-api", 1_800_000_000);
        m.certificate_expiry(ExpiryKind::ConsumerPin, "payments-gw/ab12", 1_700_000_000);
        let unnamed = m.render_unnamed();
        for name in ["fraud-secret-project", "payments-api", "payments-gw"] {
            assert!(!unnamed.contains(name), "{unnamed}");
            assert!(m.render().contains(name));
        }
        assert!(unnamed.contains(
            "keybroker_certificate_expiry_earliest_timestamp_seconds{kind=\"credential\"} 1800000000"
        ), "{unnamed}");
        assert_eq!(unnamed.matches("# EOF").count(), 1);
        assert_eq!(m.render().matches("# EOF").count(), 1);
        m.forget_certificate(ExpiryKind::Credential, "payments-api");
        assert!(m.render_unnamed().contains(
            "keybroker_certificate_expiry_earliest_timestamp_seconds{kind=\"credential\"} 1900000000"
        ));
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("api", "/v1/resolve", RequestOutcome::of_status(200));
        m.request("api", "/v1/resolve", RequestOutcome::Ok);
        m.source_read("vault", "ok", Duration::from_millis(3));
        m.cache(true);
        m.cache(false);
        m.repaired(crate::pem::RepairKind::SpacesToNewlines.code());
        m.certificate_expiry(ExpiryKind::Credential, "partner\"api", 1_900_000_000);
        m.certificate_expiry(ExpiryKind::Server, "server", 1_800_000_000);
        let text = m.render();
        for line in [
            "keybroker_requests_total{door=\"api\",route=\"/v1/resolve\",decision=\"ok\"} 2",
            "keybroker_source_read_seconds_bucket{le=\"0.0025\",source=\"vault\"} 0",
            "keybroker_source_read_seconds_bucket{le=\"0.005\",source=\"vault\"} 1",
            "keybroker_source_read_seconds_count{source=\"vault\"} 1",
            "keybroker_cache_requests_total{result=\"hit\"} 1",
            "keybroker_pem_repairs_total{kind=\"spaces_to_newlines\"} 1",
            "keybroker_certificate_expiry_timestamp_seconds{kind=\"credential\",name=\"partner\\\"api\"} 1900000000",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        m.forget_certificate(ExpiryKind::Credential, "partner\"api");
        let text = m.render();
        assert!(!text.contains("partner"), "{text}");
        assert!(text.contains("kind=\"server\""));
    }
}
