//! What every door stands on, beside the doors rather than inside one: the listeners and the
//! peer they record (`listen.rs`), TLS with its client verifier (`tls.rs`), and the service
//! around each door's router (`observe.rs`). The main API, the Vault-compatible API, the egress
//! proxy and the CCP API all import it; no door imports another (`tests/architecture.rs`).

pub(crate) mod listen;
pub(crate) mod observe;
pub(crate) mod tls;
