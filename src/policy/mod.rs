//! Access policy (docs/DESIGN.md §5): who may read what, for which destination.
//!
//! Policy is plain data ([`Policy`]) plus one pure decision function ([`Policy::decide`]);
//! the default is deny. **Boundary:** no I/O but loading; nothing here is cached with values.

mod decide;
pub mod host;
mod index;
mod load;
mod model;
mod name;
mod route;
mod subject;
mod time;

pub use decide::{Basis, Decision, DecisionReason, Rule, Subject};
pub use host::{Destination, HostError, HostPattern};
pub use load::{
    KnownSources, LoadCache, PolicyError, issuer_keys, load, load_checked, load_checked_dirs,
    load_checked_dirs_cached, pem_certificates,
};
pub use model::{
    AppRole, Consumer, Credential, CredentialMode, CredentialValues, Grant, JwtRole,
    KubernetesRole, MAX_BOUND_CIDRS, Origin, PathPattern, Pin, Policy, ReadAccess, parse_net,
};
pub use name::{EntryName, NotAName, TeamSlug, is_slug};
pub use route::{Unrouted, path_of};
pub use subject::SubjectPattern;
pub use time::rfc3339;
