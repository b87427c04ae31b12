//! The CLI as a door: a failure class → an exit code (sysexits where one fits), this door's
//! row of the one table (`tests/doors.rs`). Scripts and init containers tell "try again
//! later" from "fix something first" by the code alone.

use crate::broker::Failure;

/// sysexits' EX_TEMPFAIL: a source was unavailable, try again later.
pub(crate) const TEMPFAIL: u8 = 75;
/// sysexits' EX_NOPERM: a source refused keybroker's own credentials; retrying will not help.
pub(crate) const NOPERM: u8 = 77;
/// Usage, configuration or environment error (also a source's configuration shown wrong).
pub(crate) const USAGE: u8 = 2;
/// The request was understood and refused or could not be satisfied.
pub(crate) const REFUSED: u8 = 1;

pub fn code(class: Failure) -> u8 {
    match class {
        Failure::Unavailable | Failure::AuditUnavailable => TEMPFAIL,
        Failure::SourceCredentialsRefused => NOPERM,
        Failure::SourceMisconfigured => USAGE,
        Failure::Unauthenticated
        | Failure::Invalid
        | Failure::TooMany
        | Failure::TooLarge
        | Failure::Unresolved
        | Failure::NotFound
        | Failure::Denied
        | Failure::Ambiguous
        | Failure::Rejected
        | Failure::Broken => REFUSED,
    }
}

/// What to tell the operator beside the code, for the classes that have a fix to name.
pub(crate) fn hint(class: Failure) -> Option<&'static str> {
    match class {
        Failure::SourceCredentialsRefused => Some(
            "a source refused keybroker's own credentials: check VAULT_TOKEN/BAO_TOKEN, the source's token_file, or its login method's role and secret",
        ),
        Failure::SourceMisconfigured => Some(
            "a source's answers show its configuration to be wrong: CCP's web server answers a bare 404 to every query — check the source's service_path (e.g. AIMWebService)",
        ),
        _ => None,
    }
}
