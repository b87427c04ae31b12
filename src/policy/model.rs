//! The policy model (docs/DESIGN.md §5) as validated data: teams, consumers, credentials,
//! grants. Built only by [`super::load`]; every value here has been checked.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::host::HostPattern;
use crate::reference::{Reference, SecretPath};

/// `read_access` of a credential (Tines' model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReadAccess {
    /// Only the owning team.
    #[default]
    Team,
    /// Every team.
    Global,
    /// The owning team and `shared_team_slugs`.
    SpecificTeams,
}

/// What a credential hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialMode {
    /// Client certificate, private key and optional root certificate.
    Mtls,
    /// One value.
    Text,
    /// All fields of one secret.
    Fields,
}

/// A consumer: a caller identity belonging to one team.
pub struct Consumer {
    pub name: String,
    pub team: String,
    /// Client-certificate SHA-256 fingerprints, each valid until its optional `not_after`.
    pub cert_sha256: Vec<([u8; 32], Option<SystemTime>)>,
    /// Apinizer-style issuer ACL: a CA file (its certificates, DER, read at load) and a
    /// subject pattern.
    pub issuer_ca: Option<PathBuf>,
    pub issuer_certs: Vec<Vec<u8>>,
    pub subject: Option<super::SubjectPattern>,
    /// SHA-256 of the bearer token. Compared in constant time only.
    pub(crate) token_sha256: Option<[u8; 32]>,
    pub admin: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("team", &self.team)
            .field("cert_sha256", &self.cert_sha256.len())
            .field("issuer_ca", &self.issuer_ca)
            .field("subject", &self.subject)
            .field("token", &self.token_sha256.map(|_| "[redacted]"))
            .field("admin", &self.admin)
            .finish()
    }
}

/// Where a credential's value comes from: a reference, resolved on use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialValues {
    /// `client_certificate`, `client_private_key`, `root_certificate` (mtls) or `value`.
    pub by_role: BTreeMap<&'static str, Reference>,
}

#[derive(Debug)]
pub struct Credential {
    pub name: String,
    pub mode: CredentialMode,
    pub team: String,
    pub read_access: ReadAccess,
    pub shared_team_slugs: Vec<String>,
    pub allowed_hosts: Vec<HostPattern>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub pem: Option<crate::pem::Mode>,
    pub values: CredentialValues,
}

/// A path pattern of a grant: `*` is one segment, `**` any number (also none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<String>,
    text: String,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let segments: Vec<String> = text.split('/').map(str::to_owned).collect();
        for s in &segments {
            let ok = s == "*"
                || s == "**"
                || (!s.is_empty()
                    && s != "."
                    && s != ".."
                    && !s.contains('*')
                    && SecretPath::from_segments([s.as_str()]).is_ok());
            if !ok {
                return Err("path patterns are segments, `*` (one segment) or `**` (any depth)");
            }
        }
        Ok(Self {
            segments,
            text: text.to_owned(),
        })
    }

    pub fn matches(&self, path: &SecretPath) -> bool {
        fn go(pat: &[String], path: &[String]) -> bool {
            match pat.split_first() {
                None => path.is_empty(),
                Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| go(rest, &path[i..])),
                Some((p, rest)) => match path.split_first() {
                    Some((seg, more)) => (p == "*" || p == seg) && go(rest, more),
                    None => false,
                },
            }
        }
        go(&self.segments, path.segments())
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Lets a team resolve raw references under path patterns of one source.
#[derive(Debug)]
pub struct Grant {
    pub team: String,
    pub source: String,
    pub paths: Vec<PathPattern>,
    pub allowed_hosts: Vec<HostPattern>,
}

/// A whole, validated policy.
#[derive(Debug, Default)]
pub struct Policy {
    pub teams: Vec<String>,
    pub consumers: Vec<Consumer>,
    pub credentials: Vec<Credential>,
    pub grants: Vec<Grant>,
    /// What `check` warns about (the policy loaded anyway): overlapping issuer ACLs of
    /// different teams, credentials reading outside their team's grants.
    pub warnings: Vec<crate::diag::Diagnostic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> SecretPath {
        SecretPath::from_segments(p.split('/')).unwrap()
    }

    #[test]
    fn path_patterns() {
        let one = PathPattern::parse("payments/*").unwrap();
        assert!(one.matches(&path("payments/db")));
        assert!(!one.matches(&path("payments/a/b")));
        assert!(!one.matches(&path("payments")));
        assert!(!one.matches(&path("paymentsx/db")));
        let deep = PathPattern::parse("payments/**").unwrap();
        assert!(deep.matches(&path("payments/a/b")));
        assert!(deep.matches(&path("payments")));
        assert!(PathPattern::parse("pay*").is_err());
        assert!(PathPattern::parse("a/../b").is_err());
        assert!(PathPattern::parse("a//b").is_err());
    }
}
