//! The egress proxy's request-target (`egress::target`): never panics, and a target it accepts
//! becomes an `https://` URL that parses, to the same host and port the policy decided on.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/egress_target/` on stable.
use keybroker::egress::target;

/// The target's check of one input.
pub fn check(data: &[u8]) {
    let Ok(uri) = axum::http::Uri::try_from(data) else {
        return;
    };
    let Ok(t) = target(&uri) else {
        return;
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("https://{}:{}{path}", t.url_host, t.port);
    let parsed = url::Url::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(parsed.port_or_known_default(), Some(t.port), "{url}");
    // The host connected to is the host decided on, exactly (both canonical).
    let connected = parsed.host_str().unwrap_or_default();
    assert_eq!(connected, t.url_host, "{url}: decided on {}", t.host);
    assert_eq!(
        connected.trim_matches(['[', ']']),
        t.host,
        "{url}: decided on {}",
        t.host
    );
}
