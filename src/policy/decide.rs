//! The one pure decision: (consumer, credential or reference, destination) → allow or deny,
//! with a reason code and the rule that matched. Default deny. A denial for a credential the
//! caller cannot see is indistinguishable from one that does not exist.

use serde::Serialize;

use super::host::Destination;
use super::host::HostPattern;
use super::model::{Credential, PathPattern, Policy, ReadAccess};
use crate::reference::SecretPath;

/// What is asked for.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A named credential (`/v1/credentials/{name}/material`).
    Credential(&'a str),
    /// A raw reference in a `/v1/resolve` document.
    Reference {
        source: &'a str,
        path: &'a SecretPath,
    },
}

/// Why a decision came out as it did: a closed list with stable codes (audit `reason`,
/// `policy explain`, debug logs). A denial for a credential the caller cannot see has the
/// same reason as one that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionReason {
    Allowed,
    UnknownConsumer,
    NoGrant,
    HostRequired,
    NoAllowedHosts,
    HostNotAllowed,
    AmbiguousCredential,
    NotFoundOrNotVisible,
    /// The egress proxy's choice: no visible mtls credential's `allowed_hosts` match.
    NoCredentialFits,
    /// The egress proxy's choice: more than one does (the caller must name one).
    SeveralCredentialsFit,
}

impl DecisionReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::UnknownConsumer => "unknown_consumer",
            Self::NoGrant => "no_grant",
            Self::HostRequired => "host_required",
            Self::NoAllowedHosts => "no_allowed_hosts",
            Self::HostNotAllowed => "host_not_allowed",
            Self::AmbiguousCredential => "ambiguous_credential",
            Self::NotFoundOrNotVisible => "not_found_or_not_visible",
            Self::NoCredentialFits => "no_credential_fits",
            Self::SeveralCredentialsFit => "several_credentials_fit",
        }
    }
}

impl Serialize for DecisionReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl std::fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The outcome, with enough to explain it. It borrows from the policy: the rule's text is
/// only written when someone reads it (`policy explain`, a debug log), not on every decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision<'p> {
    pub allowed: bool,
    pub reason: DecisionReason,
    /// The rule that allowed (or, for host denials, the grant or credential considered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule<'p>>,
    /// The consumer's team, when the consumer is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<&'p str>,
}

/// The rule a decision rests on, printed as `grant <team> <source>:<path>` or
/// `credential <team>/<name> (<why>)`, with `; host <pattern>` when a destination matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule<'p> {
    pub basis: Basis<'p>,
    /// The `allowed_hosts` entry the destination matched.
    pub host: Option<&'p HostPattern>,
}

/// What a [`Rule`] grants from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis<'p> {
    Grant {
        team: &'p str,
        source: &'p str,
        path: &'p PathPattern,
    },
    Credential {
        team: &'p str,
        name: &'p str,
        why: &'static str,
    },
}

impl std::fmt::Display for Rule<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.basis {
            Basis::Grant { team, source, path } => write!(f, "grant {team} {source}:{path}")?,
            Basis::Credential { team, name, why } => {
                write!(f, "credential {team}/{name} ({why})")?;
            }
        }
        match self.host {
            Some(p) => write!(f, "; host {p}"),
            None => Ok(()),
        }
    }
}

impl Serialize for Rule<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'p> Decision<'p> {
    fn deny(reason: DecisionReason, team: Option<&'p str>, rule: Option<Rule<'p>>) -> Self {
        Self {
            allowed: false,
            reason,
            rule,
            team,
        }
    }
}

/// Whether a credential of another team, shared as `access` with `shared`, is visible to
/// `team` (its own team always sees it).
fn shares_with(access: ReadAccess, shared: &[String], team: &str) -> bool {
    match access {
        ReadAccess::Team => false,
        ReadAccess::Global => true,
        ReadAccess::SpecificTeams => shared.iter().any(|t| t == team),
    }
}

impl Policy {
    /// Who would read a credential `name` of `team` shared as `access` with `shared` — the
    /// management plane's dry run: every consumer that [`Policy::visible_credential`] would
    /// give it to, with why (`team`, `global`, `shared`). A consumer whose team has its own
    /// credential of that name, or already sees another team's, would not.
    pub fn readers(
        &self,
        team: &str,
        name: &str,
        access: ReadAccess,
        shared: &[String],
    ) -> Vec<(&str, &str, &'static str)> {
        let others = |t: &str| {
            self.credentials
                .iter()
                .filter(move |c| c.name == name && c.team != team)
                .any(|c| c.team == t || shares_with(c.read_access, &c.shared_team_slugs, t))
        };
        self.consumers
            .iter()
            .filter_map(|c| {
                let why = if c.team == team {
                    "team"
                } else if !shares_with(access, shared, &c.team) || others(&c.team) {
                    return None;
                } else if access == ReadAccess::Global {
                    "global"
                } else {
                    "shared"
                };
                Some((c.name.as_str(), c.team.as_str(), why))
            })
            .collect()
    }

    /// The credential `name` as `team` sees it: its own first (same-team name wins), else
    /// the one other team's credential shared with it.
    pub fn visible_credential(
        &self,
        team: &str,
        name: &str,
    ) -> Result<&Credential, DecisionReason> {
        let index = self.index();
        let named = || {
            index
                .credentials(name)
                .iter()
                .map(|&i| &self.credentials[i])
                .filter(move |c| c.name == name)
        };
        if let Some(own) = named().find(|c| c.team == team) {
            return Ok(own);
        }
        let mut shared = named().filter(|c| shares_with(c.read_access, &c.shared_team_slugs, team));
        match (shared.next(), shared.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(DecisionReason::AmbiguousCredential),
            (None, _) => Err(DecisionReason::NotFoundOrNotVisible),
        }
    }

    /// Decides one request. Pure: the same inputs give the same decision, whatever any cache
    /// holds.
    pub fn decide(
        &self,
        consumer: &str,
        subject: Subject<'_>,
        host: Option<&Destination>,
    ) -> Decision<'_> {
        let index = self.index();
        let Some(c) = self.consumer(&index, consumer) else {
            return Decision::deny(DecisionReason::UnknownConsumer, None, None);
        };
        let team = c.team.as_str();
        match subject {
            Subject::Credential(name) => self.decide_credential(consumer, name, host).0,
            Subject::Reference { source, path } => {
                let mut considered = None;
                for g in index
                    .grants(team, source)
                    .iter()
                    .map(|&i| &self.grants[i])
                    .filter(|g| g.team == team && g.source == source)
                {
                    let Some(p) = g.paths.iter().find(|p| p.matches(path)) else {
                        continue;
                    };
                    let rule = Rule {
                        basis: Basis::Grant {
                            team: &g.team,
                            source: &g.source,
                            path: p,
                        },
                        host: None,
                    };
                    let d = hosts_decision(&g.allowed_hosts, host, team, rule);
                    if d.allowed {
                        return d;
                    }
                    considered.get_or_insert(d);
                }
                considered
                    .unwrap_or_else(|| Decision::deny(DecisionReason::NoGrant, Some(team), None))
            }
        }
    }
}

impl Policy {
    /// The consumer called `name` (the index's answer checked against the policy itself).
    fn consumer(&self, index: &super::index::Index, name: &str) -> Option<&super::Consumer> {
        index
            .consumer(name)
            .map(|i| &self.consumers[i])
            .filter(|c| c.name == name)
    }

    /// [`Policy::decide`] for a named credential, with the credential the decision is about
    /// (when the consumer can see one), so the caller does not look it up a second time.
    pub fn decide_credential(
        &self,
        consumer: &str,
        name: &str,
        host: Option<&Destination>,
    ) -> (Decision<'_>, Option<&Credential>) {
        let Some(c) = self.consumer(&self.index(), consumer) else {
            return (
                Decision::deny(DecisionReason::UnknownConsumer, None, None),
                None,
            );
        };
        let team = c.team.as_str();
        let cred = match self.visible_credential(team, name) {
            Ok(cred) => cred,
            Err(reason) => return (Decision::deny(reason, Some(team), None), None),
        };
        let why = match (cred.team == team, cred.read_access) {
            (true, _) => "team",
            (false, ReadAccess::Global) => "global",
            (false, _) => "shared",
        };
        let rule = Rule {
            basis: Basis::Credential {
                team: &cred.team,
                name: &cred.name,
                why,
            },
            host: None,
        };
        (
            hosts_decision(&cred.allowed_hosts, host, team, rule),
            Some(cred),
        )
    }
}

impl Policy {
    /// The egress proxy's question when the caller names no credential: the one mtls
    /// credential visible to the consumer's team (as [`Policy::visible_credential`] sees it
    /// under its name) whose `allowed_hosts` match `dest`. Only a choice: the proxy then asks
    /// [`Policy::decide_credential`] for the credential it chose, like a named one.
    pub fn credential_for_destination(
        &self,
        consumer: &str,
        dest: &Destination,
    ) -> Result<&Credential, DecisionReason> {
        let Some(c) = self.consumer(&self.index(), consumer) else {
            return Err(DecisionReason::UnknownConsumer);
        };
        let team = c.team.as_str();
        let mut fitting = self.credentials.iter().filter(|cred| {
            cred.mode == super::CredentialMode::Mtls
                && cred.allowed_hosts.iter().any(|p| p.matches(dest))
                && self
                    .visible_credential(team, &cred.name)
                    .is_ok_and(|seen| std::ptr::eq(seen, &***cred))
        });
        match (fitting.next(), fitting.next()) {
            (Some(cred), None) => Ok(cred),
            (None, _) => Err(DecisionReason::NoCredentialFits),
            (Some(_), Some(_)) => Err(DecisionReason::SeveralCredentialsFit),
        }
    }
}

fn hosts_decision<'p>(
    patterns: &'p [HostPattern],
    host: Option<&Destination>,
    team: &'p str,
    rule: Rule<'p>,
) -> Decision<'p> {
    let Some(dest) = host else {
        return Decision::deny(DecisionReason::HostRequired, Some(team), Some(rule));
    };
    if patterns.is_empty() {
        return Decision::deny(DecisionReason::NoAllowedHosts, Some(team), Some(rule));
    }
    match patterns.iter().find(|p| p.matches(dest)) {
        Some(p) => Decision {
            allowed: true,
            reason: DecisionReason::Allowed,
            rule: Some(Rule {
                host: Some(p),
                ..rule
            }),
            team: Some(team),
        },
        None => Decision::deny(DecisionReason::HostNotAllowed, Some(team), Some(rule)),
    }
}
