//! Counters and histograms in Prometheus text format, written by hand: the handful of series
//! keybroker exports do not justify a metrics framework. Label values are route templates,
//! source names, reason codes, repair kinds and credential names — never a value, a path the
//! caller typed, or a host.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the source latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Everything `/metrics` reports. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, decision) → requests.
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// source → histogram of read latency (misses only; hits never reach a source).
    source_latency: Mutex<BTreeMap<String, Histogram>>,
    /// (source, outcome code) → reads.
    source_reads: Mutex<BTreeMap<(String, &'static str), u64>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// repair kind → fields repaired.
    repairs: Mutex<BTreeMap<&'static str, u64>>,
    /// credential → days until its client certificate expires (last seen).
    cert_days_left: Mutex<BTreeMap<String, i64>>,
    /// Policy reloads by outcome.
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(key).or_default() += 1;
}

impl Metrics {
    pub fn request(&self, route: &'static str, decision: &'static str) {
        bump(&self.requests, (route, decision));
    }

    pub fn source_read(&self, source: &str, outcome: &'static str, took: Duration) {
        bump(&self.source_reads, (source.to_owned(), outcome));
        let secs = took.as_secs_f64();
        let mut all = self
            .source_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let h = all.entry(source.to_owned()).or_default();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn cache(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn repaired(&self, kind: &'static str) {
        bump(&self.repairs, kind);
    }

    pub fn certificate_days_left(&self, credential: &str, days: i64) {
        let mut m = self
            .cert_days_left
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.insert(credential.to_owned(), days);
    }

    pub fn reload(&self, outcome: &'static str) {
        bump(&self.reloads, outcome);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP keybroker_requests_total Requests by route and decision.\n");
        out.push_str("# TYPE keybroker_requests_total counter\n");
        for ((route, decision), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keybroker_requests_total{{route=\"{route}\",decision=\"{decision}\"}} {n}"
            );
        }

        out.push_str(
            "# HELP keybroker_source_reads_total Source reads (cache misses) by outcome.\n",
        );
        out.push_str("# TYPE keybroker_source_reads_total counter\n");
        for ((source, outcome), n) in self
            .source_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keybroker_source_reads_total{{source=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(source)
            );
        }

        out.push_str(
            "# HELP keybroker_source_read_seconds Latency of source reads, retries included.\n",
        );
        out.push_str("# TYPE keybroker_source_read_seconds histogram\n");
        for (source, h) in self
            .source_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let s = escape(source);
            for (le, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "keybroker_source_read_seconds_bucket{{source=\"{s}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "keybroker_source_read_seconds_bucket{{source=\"{s}\",le=\"+Inf\"}} {}\n\
                 keybroker_source_read_seconds_sum{{source=\"{s}\"}} {}\n\
                 keybroker_source_read_seconds_count{{source=\"{s}\"}} {}",
                h.count, h.sum, h.count
            );
        }

        out.push_str("# HELP keybroker_cache_requests_total Secret cache lookups by result.\n");
        out.push_str("# TYPE keybroker_cache_requests_total counter\n");
        let _ = writeln!(
            out,
            "keybroker_cache_requests_total{{result=\"hit\"}} {}\n\
             keybroker_cache_requests_total{{result=\"miss\"}} {}",
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed)
        );

        out.push_str(
            "# HELP keybroker_pem_repairs_total PEM fields repaired, by kind of repair.\n",
        );
        out.push_str("# TYPE keybroker_pem_repairs_total counter\n");
        for (kind, n) in self
            .repairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "keybroker_pem_repairs_total{{kind=\"{kind}\"}} {n}");
        }

        out.push_str(
            "# HELP keybroker_credential_certificate_days_left Days until a credential's client certificate expires (as last read).\n",
        );
        out.push_str("# TYPE keybroker_credential_certificate_days_left gauge\n");
        for (name, days) in self
            .cert_days_left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keybroker_credential_certificate_days_left{{credential=\"{}\"}} {days}",
                escape(name)
            );
        }

        out.push_str("# HELP keybroker_policy_reloads_total Policy reloads by outcome.\n");
        out.push_str("# TYPE keybroker_policy_reloads_total counter\n");
        for (outcome, n) in self
            .reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "keybroker_policy_reloads_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }
}

/// Label values are configuration names; escape what the format requires anyway.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("/v1/resolve", "allowed");
        m.request("/v1/resolve", "allowed");
        m.source_read("vault", "ok", Duration::from_millis(3));
        m.cache(true);
        m.cache(false);
        m.repaired("spaces_for_newlines");
        m.certificate_days_left("partner\"api", 42);
        let text = m.render();
        assert!(
            text.contains("keybroker_requests_total{route=\"/v1/resolve\",decision=\"allowed\"} 2")
        );
        assert!(
            text.contains("keybroker_source_read_seconds_bucket{source=\"vault\",le=\"0.0025\"} 0")
        );
        assert!(
            text.contains("keybroker_source_read_seconds_bucket{source=\"vault\",le=\"0.005\"} 1")
        );
        assert!(text.contains("keybroker_source_read_seconds_count{source=\"vault\"} 1"));
        assert!(text.contains("keybroker_cache_requests_total{result=\"hit\"} 1"));
        assert!(text.contains("keybroker_pem_repairs_total{kind=\"spaces_for_newlines\"} 1"));
        assert!(text.contains(
            "keybroker_credential_certificate_days_left{credential=\"partner\\\"api\"} 42"
        ));
    }
}
