//! Reference → source and path: the one routing of a reference, used by the broker (every
//! read), the policy loader (a credential's references checked against its team's grants) and
//! `policy explain`. `$SECRET_<source>:<path>` names its source; `$SECRET_<path>` goes to the
//! default source; `$SAFE_<safe> $NAME_<object>` to the CCP source, as the path
//! `<safe>/<object>`.

use super::KnownSources;
use crate::reference::{ParseErrorKind, SecretPath, Target};

/// A reference that names no source where none is configured to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrouted {
    #[error("no default source is configured: write `$SECRET_<source>:<path>`")]
    NoDefaultSource,
    #[error("`$SAFE_` references need a ccp source, and none is configured")]
    NoCcpSource,
}

impl KnownSources {
    /// The source `target` reads from (named, default or CCP); not checked to exist.
    pub fn source_of<'a>(&'a self, target: &'a Target) -> Result<&'a str, Unrouted> {
        match target {
            Target::Secret {
                source: Some(name), ..
            } => Ok(name),
            Target::Secret { source: None, .. } => {
                self.default.as_deref().ok_or(Unrouted::NoDefaultSource)
            }
            Target::Ccp { .. } => self.ccp.as_deref().ok_or(Unrouted::NoCcpSource),
        }
    }
}

/// The path `target` reads at its source.
pub(crate) fn path_of(target: &Target) -> Result<SecretPath, ParseErrorKind> {
    match target {
        Target::Secret { path, .. } => Ok(path.clone()),
        Target::Ccp { safe, object } => SecretPath::from_segments([safe.as_str(), object]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::parse_reference;

    #[test]
    fn named_default_and_ccp_references_are_routed() {
        let known = KnownSources {
            names: ["files".to_owned(), "cark".to_owned()].into(),
            default: Some("files".to_owned()),
            ccp: Some("cark".to_owned()),
            store: None,
            issuing: Default::default(),
            signing: Default::default(),
            pki_names: Default::default(),
        };
        let route = |text: &str| {
            let r = parse_reference(text).unwrap();
            let source = known.source_of(&r.target).map(str::to_owned);
            (source, path_of(&r.target).unwrap().to_string())
        };
        assert_eq!(
            route("$SECRET_v:a/b $KEY_k"),
            (Ok("v".into()), "a/b".into())
        );
        assert_eq!(
            route("$SECRET_a/b $KEY_k"),
            (Ok("files".into()), "a/b".into())
        );
        assert_eq!(route("$SAFE_s $NAME_o"), (Ok("cark".into()), "s/o".into()));
        let none = KnownSources::default();
        let r = parse_reference("$SAFE_s $NAME_o").unwrap();
        assert_eq!(none.source_of(&r.target), Err(Unrouted::NoCcpSource));
        let r = parse_reference("$SECRET_a $KEY_k").unwrap();
        assert_eq!(none.source_of(&r.target), Err(Unrouted::NoDefaultSource));
    }
}
