//! The egress proxy's request-target (`egress::target`): never panics, and a target it accepts
//! becomes an `https://` URL that parses, to the same host, port and path the policy decided on.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/egress_target/` on stable.
use keybroker::testing::egress::target;

/// The target's check of one input.
pub fn check(data: &[u8]) {
    let Ok(uri) = axum::http::Uri::try_from(data) else {
        return;
    };
    let Ok(t) = target(&uri) else {
        return;
    };
    let url = format!("https://{}:{}{}", t.url_host, t.port, t.path_and_query);
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
    // The path sent is the path decided on, exactly (parsing it again changes nothing).
    assert_eq!(Some(parsed.path()), t.dest.path.as_deref(), "{url}");
}
