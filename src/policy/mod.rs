//! Access policy (docs/DESIGN.md §5): who may read what, for which destination.
//!
//! Policy is plain data ([`Policy`]) plus one pure decision function ([`Policy::decide`]);
//! the default is deny. **Boundary:** no I/O but loading; nothing here is cached with values.

mod decide;
pub(crate) mod host;
mod index;
mod known;
mod load;
mod model;
mod name;
mod route;
mod subject;
mod time;

pub(crate) use decide::DecisionReason;
pub use decide::Subject;
pub use host::{Destination, HostPattern};
pub use load::{
    KnownSources, PolicyError, load, load_checked, load_checked_dirs, pem_certificates,
};
pub(crate) use load::{LoadCache, issuer_keys, load_checked_dirs_cached};
#[cfg(test)]
pub(crate) use model::Renewed;
pub(crate) use model::{
    Consumer, Credential, CredentialMode, CredentialValues, MAX_BOUND_CIDRS, PathPattern, Pin,
    ReadAccess, parse_net,
};
pub use model::{Origin, Policy};
pub(crate) use name::{EntryName, TeamSlug, is_slug};
pub(crate) use route::{Unrouted, path_of};
pub use subject::SubjectPattern;
pub(crate) use time::rfc3339;
