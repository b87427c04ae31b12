//! The reference language (docs/DESIGN.md §2): `$SECRET_<path> $KEY_<field>`,
//! `$SAFE_<safe> $NAME_<object>`, and their expansion in JSON, YAML and text documents.
//!
//! Data flow: [`parse`] turns a string into a [`Template`]; [`locate`] finds templates in a
//! document and prepares a secret-free skeleton; [`render`] writes the expanded document
//! into a zeroizing [`crate::secret::SecretBuf`], all or nothing.
//!
//! **Boundary:** this module knows nothing of sources, policy or the network. It is given a
//! lookup function and never fetches anything itself.

mod error;
mod json;
mod locate;
mod parse;
mod pointer;
mod render;
mod yaml;

pub use error::Location;
pub use error::Reason;
pub(crate) use error::{DocumentError, ExpandError, ParseErrorKind};
pub use locate::{Format, Layout, Prepared};
pub use parse::parse_template_lenient;
pub use parse::{
    Part, Reference, SecretPath, Target, is_ccp_forbidden, parse_reference, parse_template,
};
pub use render::{RenderError, RenderLimits, Resolved};
