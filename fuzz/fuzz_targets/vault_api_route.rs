//! The Vault-compatible API's request line (`vault_api::route::route`): never panics, and what
//! it routes to a read is well formed — a mount, a non-empty path of non-empty segments, and
//! a version only when it is a positive number.
//!
//! Input: byte 0 picks the method, the rest is `path[?query]`.
#![no_main]

use axum::http::Method;
use keybroker::testing::vault_api::route::{Route, route};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "LIST", "PATCH", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let method = Method::from_bytes(METHODS[m as usize % METHODS.len()].as_bytes()).unwrap();
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let Ok(r) = route(&method, path, query) else {
        return;
    };
    match r {
        Route::Read {
            mount,
            path,
            version,
            ..
        } => {
            assert!(!mount.is_empty());
            assert!(!path.is_empty());
            assert!(path.iter().all(|s| !s.is_empty()));
            assert_ne!(version, Some(0));
            assert!(method == Method::GET || method == Method::HEAD);
        }
        Route::Health | Route::MountInfo(_) | Route::LookupSelf => {
            assert!(method == Method::GET || method == Method::HEAD);
        }
        _ => {}
    }
});
