//! The names things are known by — a team's slug and a credential's or consumer's name — as
//! types: parsed once at the edge (every route's path, query and body; the policy loader holds
//! policy files to the same grammar), so a string never reaches a lookup or a path join. `..`, `/`, `%2F` decoded by the router, upper case,
//! dots, empty and overlong names are not names: nothing is looked up for them.

use std::fmt;

/// The one grammar of a stored name: `[a-z0-9_-]{1,64}`. No dot, so never `.` or `..`; no
/// slash, so never a second path segment.
pub(crate) fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Why a text is not a name (never the text itself: it is the caller's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must match [a-z0-9_-]{{1,64}}")]
pub struct NotAName;

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, NotAName> {
                if is_slug(s) { Ok(Self(s.to_owned())) } else { Err(NotAName) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A path segment: the type's promise checked a second time where it matters
            /// (a store path), so no future constructor can bypass it unnoticed.
            pub fn segment(&self) -> &str {
                assert!(is_slug(&self.0), "a stored name outside its grammar");
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NotAName;
            fn try_from(s: String) -> Result<Self, NotAName> {
                if is_slug(&s) { Ok(Self(s)) } else { Err(NotAName) }
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

slug_type!(
    /// A team's slug, as the management plane takes it.
    TeamSlug
);
slug_type!(
    /// The name of a stored credential or consumer (unique within its team; a consumer's
    /// across teams).
    EntryName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slugs_are_names() {
        for ok in ["a", "fraud-ci", "payments_db", "0", &"x".repeat(64)] {
            assert!(EntryName::parse(ok).is_ok(), "{ok}");
            assert!(TeamSlug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../fraud/fraud-ci",
            "a/b",
            "a\\b",
            "A",
            "a.b",
            "a%2Fb",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert_eq!(EntryName::parse(bad), Err(NotAName), "{bad:?}");
            assert_eq!(TeamSlug::parse(bad), Err(NotAName), "{bad:?}");
        }
        let from_json: Result<TeamSlug, _> = serde_json::from_str("\"../x\"");
        assert!(from_json.is_err());
    }
}
