//! `If-None-Match` and `?wait=` (`api::change::Conditional`): never panics, never waits more
//! than 300 s, and a request without `If-None-Match` never waits.
//!
//! Input: `header value\nquery`.
#![no_main]

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use keybroker::testing::api::change::Conditional;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (value, query) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], std::str::from_utf8(&data[i + 1..]).ok()),
        None => (data, None),
    };
    let mut headers = HeaderMap::new();
    let with_header = match HeaderValue::from_bytes(value) {
        Ok(v) => {
            headers.append(header::IF_NONE_MATCH, v);
            true
        }
        Err(_) => false,
    };
    if let Ok(c) = Conditional::parse(&headers, query) {
        assert!(c.wait() <= Duration::from_secs(300));
        if !with_header {
            assert_eq!(c.wait(), Duration::ZERO);
        }
    }
});
