//! What the tests, benches and fuzz targets reach inside the library, by name: not the
//! library's surface (that is `lib.rs`'s list), and hidden from its documentation. An item
//! here is one a test drives directly — a parser, a renderer's table, a builder — so a change
//! to it is seen by the tests that hold it.

pub mod agent {
    pub use crate::agent::AgentConfig;
}

pub mod api {
    pub use crate::api::{AppState, MAX_BODY_BYTES, ROUTES, ServerTls, router, status};
    pub mod change {
        pub use crate::api::change::Conditional;
    }
}

pub mod app {
    pub use crate::app::{App, Options};
    pub mod operations {
        pub use crate::app::operations::start;
    }
}

pub mod broker {
    pub use crate::broker::{
        Ask, Broker, Caller, ConsumerRef, Document, Expand, Failure, Resolution, ResolveError,
        SIGNS_PER_PERIOD,
    };
}

pub mod ccp_api {
    pub use crate::ccp_api::{CcpError, status};
}

pub mod config {
    pub use crate::config::{Config, ConfigError, LimitsConfig, SourceConfig};
}

pub mod door {
    pub mod listen {
        pub use crate::door::listen::serve;
    }
}

pub mod egress {
    pub use crate::egress::{status, target};
}

pub mod exit {
    pub use crate::exit::code;
}

pub mod identity {
    pub use crate::identity::{
        ClientCert, Door, Identities, IssuedTo, Snapshot, TokenDigest, decode_certificate,
    };
}

pub mod pem {
    pub use crate::pem::{
        Checks, Mode, Options, PemError, RepairKind, danger_restore_unverified, repair,
    };
    pub mod csr {
        pub use crate::pem::csr::{CsrRules, check};
    }
}

pub mod policy {
    pub use crate::policy::{
        Destination, HostPattern, KnownSources, Origin, Policy, PolicyError, Subject,
        SubjectPattern, load, load_checked, load_checked_dirs, pem_certificates,
    };
}

pub mod reference {
    pub use crate::reference::{
        Format, Layout, Location, Part, Prepared, Reason, Reference, RenderError, RenderLimits,
        Resolved, SecretPath, Target, is_ccp_forbidden, parse_reference, parse_template,
        parse_template_lenient,
    };
}

pub mod secret {
    pub use crate::secret::{Secret, SecretMeta, secret_string};
}

pub mod source {
    pub use crate::source::{
        CcpSource, FileSource, Outage, ReadRequest, SecretSource, SourceError, VaultEnv,
        VaultSource, build_query, parse_ccp_answer, parse_kv_answer,
    };
}

pub mod vault_api {
    pub use crate::vault_api::{TokenKey, VaultError, status};
    pub mod route {
        pub use crate::vault_api::route::{Route, route};
    }
    pub mod token {
        pub use crate::vault_api::token::is_issued;
    }
}
