//! Consumers through the management API (docs/MANAGEMENT.md, "Consumers"): created with a
//! bearer token handed out once and stored as its digest, their client certificates added and
//! revoked (Gravitee's lifecycle), their issuer ACL set (Apinizer's flags). A consumer is kept
//! as a policy definition in the store like a credential, so authentication reads it through
//! the one identity index and a reload (or another replica's poll) puts it in force.
//!
//! Escalation closed here: a team admin administers only consumers of teams it manages, gives
//! `admin_teams` only among those teams, and never `admin`; a certificate or an issuer ACL that
//! could identify another consumer is refused.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Manager;
use super::certificates::{self, CertificateView};
use super::{ManageError, etag, lost_race, stored, valid_name, who};
use crate::audit::Action;
use crate::broker::Caller;
use crate::identity::{ClientCert, Snapshot};
use crate::store::{EntryName, Kind, Record, TeamSlug};

/// `POST /v1/teams/{team}/consumers`.
#[derive(Debug)]
pub struct ConsumerInput {
    pub name: EntryName,
    pub team: TeamSlug,
    pub admin_teams: Vec<TeamSlug>,
    pub vault_api_host: Option<String>,
}

/// `PATCH /v1/teams/{team}/consumers/{name}`: the fields given change, the others stay.
#[derive(Debug, Default)]
pub struct ConsumerPatch {
    pub admin_teams: Option<Vec<TeamSlug>>,
    /// `Some(None)`: removed.
    pub vault_api_host: Option<Option<String>>,
}

/// `POST …/certificates`.
#[derive(Debug)]
pub struct CertificateInput {
    pub certificate: String,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
}

/// `PUT …/issuer-acl`, with Apinizer's flags.
#[derive(Debug)]
pub struct AclInput {
    pub issuer_ca: String,
    pub subject: String,
    pub validate_certificate: bool,
    pub validate_acl_for_issuer: bool,
}

/// `POST …/approle`: Vault's options of a `secret_id` (docs/MANAGEMENT.md, "AppRole").
#[derive(Debug, Default)]
pub struct ApproleInput {
    /// Vault's `secret_id_ttl` (`None` or zero: the `secret_id` does not expire).
    pub secret_id_ttl: Option<std::time::Duration>,
    /// Vault's `secret_id_num_uses`: only 0 (unlimited) is taken — see [`NUM_USES_REFUSED`].
    pub secret_id_num_uses: Option<u64>,
    pub secret_id_bound_cidrs: Vec<String>,
    pub token_bound_cidrs: Vec<String>,
}

/// Why `secret_id_num_uses` is refused: replicas share the store but would each count uses
/// of their own, so "at most N logins" would really be "at most N per replica" — a promise
/// keybroker cannot keep is refused rather than made.
const NUM_USES_REFUSED: &str = "not supported: replicas would each count uses on their own, so the limit would not hold (0, unlimited, is accepted); use secret_id_ttl and rotate";

/// The longest `secret_id_ttl` taken (ten years).
const MAX_SECRET_ID_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// A consumer's AppRole as management answers show it: the `role_id` (an identifier, as in
/// Vault) and the `secret_id`'s bounds — never the `secret_id` nor its digest.
#[derive(Clone, Debug, Serialize)]
pub struct ApproleView {
    pub role_id: String,
    pub secret_id_expires_at: Option<String>,
    pub secret_id_bound_cidrs: Vec<String>,
    pub token_bound_cidrs: Vec<String>,
}

/// A consumer as management answers show it: never its token (only whether it has one).
#[derive(Clone, Debug, Serialize)]
pub struct ManagedConsumer {
    pub name: EntryName,
    pub team: TeamSlug,
    pub admin_teams: Vec<TeamSlug>,
    pub vault_api_host: Option<String>,
    pub has_token: bool,
    pub certificates: Vec<CertificateView>,
    pub issuer_acl: Option<AclView>,
    pub approle: Option<ApproleView>,
    pub origin: &'static str,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub updated_by: String,
    #[serde(skip)]
    pub etag: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AclView {
    /// The subjects of the issuer CA certificates.
    pub issuers: Vec<String>,
    pub subject: String,
    pub validate_certificate: bool,
    pub validate_acl_for_issuer: bool,
}

/// The stored definition: a policy file with one `[[consumer]]`.
#[derive(Serialize, Deserialize)]
struct Definition {
    consumer: Vec<Body>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Body {
    name: EntryName,
    team: TeamSlug,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cert_sha256: Vec<PinBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer_ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    admin_teams: Vec<TeamSlug>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vault_api_host: Option<String>,
    /// The policy file's `approle` (its `secret_id` as a digest only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approle: Option<ApproleBody>,
}

#[derive(Clone, Serialize, Deserialize)]
struct ApproleBody {
    role_id: String,
    secret_id_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_id_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secret_id_bound_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token_bound_cidrs: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
struct PinBody {
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
}

fn render(body: &Body) -> Result<String, ManageError> {
    toml::to_string(&Definition {
        consumer: vec![body.clone()],
    })
    .map_err(|e| ManageError::Invalid {
        field: "definition",
        message: e.to_string(),
    })
}

fn parse(toml_text: &str) -> Result<Body, ManageError> {
    toml::from_str::<Definition>(toml_text)
        .ok()
        .and_then(|d| d.consumer.into_iter().next())
        .ok_or_else(|| crate::store::StoreError::Malformed("a stored consumer".into()).into())
}

/// A fingerprint as callers write it (hex, colons allowed, any case) in the stored form.
fn normalize_fingerprint(text: &str) -> String {
    text.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A change of one stored consumer: what it does to the definition and record.
type Change<'a, R> =
    Box<dyn FnOnce(&mut Body, &mut Record, &Snapshot) -> Result<R, ManageError> + Send + 'a>;

impl Manager {
    /// Creates a consumer of `input.team` with a new bearer token, returned here once.
    pub async fn create_consumer(
        &self,
        caller: &Caller,
        input: ConsumerInput,
    ) -> Result<(ManagedConsumer, Zeroizing<String>), ManageError> {
        let work = async {
            let store = self.store()?;
            self.authorize(caller, &input.team)?;
            if !valid_name(&input.name) {
                return Err(ManageError::Invalid {
                    field: "name",
                    message: "must match [a-z0-9_-]{1,64}".to_owned(),
                });
            }
            let snapshot = self.broker.policy();
            let policy = snapshot.policy();
            if !policy.teams.iter().any(|t| input.team == *t) {
                return Err(ManageError::Invalid {
                    field: "team",
                    message: format!("unknown team `{}`", input.team),
                });
            }
            // Consumer names are unique across teams (the policy's rule); a stored one of
            // another team counts too.
            let taken = policy.consumers.iter().any(|c| input.name == c.name)
                || store
                    .records(Kind::Consumer)?
                    .iter()
                    .any(|(_, n, _)| *n == input.name);
            if taken {
                return Err(ManageError::Exists);
            }
            self.check_admin_teams(caller, &input.admin_teams, policy)?;
            check_host(input.vault_api_host.as_deref())?;
            super::check_quota(store, Kind::Consumer, &input.team, &input.name, 0)?;
            let (token, digest) = crate::identity::TokenDigest::generate_prefixed("kbt_");
            let body = Body {
                name: input.name.clone(),
                team: input.team.clone(),
                token_sha256: Some(digest.hex()),
                cert_sha256: Vec::new(),
                issuer_ca_pem: None,
                subject: None,
                admin_teams: input.admin_teams.clone(),
                vault_api_host: input.vault_api_host.clone(),
                approle: None,
            };
            let at = crate::store::now();
            let record = Record::first(at, who(caller), 0);
            let toml_text = render(&body)?;
            store
                .commit(
                    Kind::Consumer,
                    &input.team,
                    &input.name,
                    &toml_text,
                    &record,
                    None,
                )
                .await
                .map_err(|e| lost_race(e, false))?;
            self.reload_or_restore(Kind::Consumer, &input.team, &input.name, &record, None)
                .await?;
            let view = view(&body, &record, etag(&toml_text, &record));
            Ok((view, token))
        };
        self.one_write(
            Action::ConsumerCreate,
            caller,
            &input.team,
            &input.name,
            work,
        )
        .await
    }

    /// Changes a consumer's settings (`If-Match` required).
    pub async fn update_consumer(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        patch: ConsumerPatch,
        if_match: Option<&str>,
    ) -> Result<ManagedConsumer, ManageError> {
        let if_match = if_match.ok_or(ManageError::PreconditionRequired);
        let change: Change<'_, ()> = Box::new(move |body, _, snapshot| {
            if let Some(teams) = patch.admin_teams {
                self.check_admin_teams(caller, &teams, snapshot.policy())?;
                body.admin_teams = teams;
            }
            if let Some(host) = patch.vault_api_host {
                check_host(host.as_deref())?;
                body.vault_api_host = host;
            }
            Ok(())
        });
        let work = async {
            let m = self.change_consumer(caller, team, name, Some(if_match), change);
            m.await.map(|(m, ())| m)
        };
        self.one_write(Action::ConsumerUpdate, caller, team, name, work)
            .await
    }

    /// Replaces a consumer's token: the new one is returned here once, the old one stops
    /// working at every door with the reload.
    pub async fn rotate_consumer_token(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<&str>,
    ) -> Result<(ManagedConsumer, Zeroizing<String>), ManageError> {
        let change: Change<'_, Zeroizing<String>> = Box::new(|body, _, _| {
            let (token, digest) = crate::identity::TokenDigest::generate_prefixed("kbt_");
            body.token_sha256 = Some(digest.hex());
            Ok(token)
        });
        let work = self.change_consumer(caller, team, name, if_match.map(Ok), change);
        self.one_write(Action::ConsumerToken, caller, team, name, work)
            .await
    }

    /// Gives a consumer an AppRole, or replaces its `secret_id` (the `role_id` stays): the
    /// `role_id` and the new `secret_id` are returned here once, the `secret_id` kept as its
    /// digest. The old `secret_id` stops logging in, and the tokens it got stop working, with
    /// the reload (their login digest no longer matches).
    pub async fn set_approle(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        input: ApproleInput,
        if_match: Option<&str>,
    ) -> Result<(ManagedConsumer, Zeroizing<String>), ManageError> {
        let change: Change<'_, Zeroizing<String>> = Box::new(move |body, _, _| {
            // Judged after the caller is authorized and the consumer found (change_consumer).
            let checked = check_approle(&input, SystemTime::now())?;
            let role_id = body
                .approle
                .as_ref()
                .map_or_else(new_role_id, |a| a.role_id.clone());
            let (secret_id, digest) = crate::identity::TokenDigest::generate_prefixed("");
            body.approle = Some(ApproleBody {
                role_id,
                secret_id_sha256: digest.hex(),
                secret_id_expires_at: checked.expires_at,
                secret_id_bound_cidrs: checked.secret_id_bound_cidrs,
                token_bound_cidrs: checked.token_bound_cidrs,
            });
            Ok(secret_id)
        });
        let subject = format!("{name}/approle");
        let work = self.change_consumer(caller, team, name, if_match.map(Ok), change);
        self.one_write(Action::ConsumerApprole, caller, team, &subject, work)
            .await
    }

    /// Removes a consumer's AppRole: its `secret_id` stops logging in and its tokens stop
    /// working with the reload. 404 when the consumer has none.
    pub async fn delete_approle(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<&str>,
    ) -> Result<ManagedConsumer, ManageError> {
        let change: Change<'_, ()> =
            Box::new(|body, _, _| body.approle.take().map(|_| ()).ok_or(ManageError::NotFound));
        let subject = format!("{name}/approle");
        let work = async {
            let changed = self.change_consumer(caller, team, name, if_match.map(Ok), change);
            changed.await.map(|(m, ())| m)
        };
        self.one_write(Action::ConsumerApproleDelete, caller, team, &subject, work)
            .await
    }

    /// Deletes a consumer of the store: its token and certificates stop working everywhere.
    pub async fn delete_consumer(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<&str>,
    ) -> Result<(), ManageError> {
        let work = self.delete_stored(Kind::Consumer, caller, team, name, if_match);
        self.one_write(Action::ConsumerDelete, caller, team, name, work)
            .await
    }

    /// Adds a client certificate to a consumer, checked against the verifier handshakes use
    /// (`[server] client_ca`, `client_crl`).
    pub async fn add_consumer_certificate(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        input: CertificateInput,
        verifier: Option<&dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<CertificateView, ManageError> {
        let now = SystemTime::now();
        // Checked before anything is read or written: a refusal costs the store nothing.
        let checked = if caller.may_manage(team) {
            Some(certificates::check(
                &input.certificate,
                input.starts_at.as_deref(),
                input.ends_at.as_deref(),
                verifier,
                now,
                &who(caller),
            ))
        } else {
            None
        };
        let subject = format!("{name}/certificates");
        let work = async {
            self.authorize(caller, team)?;
            let checked = checked.ok_or_else(|| ManageError::NotAllowed(team.to_string()))??;
            // Revoked in this team by a consumer since deleted: still revoked.
            let tombstoned = self
                .store()?
                .revoked(team)
                .await?
                .contains(&checked.record.fingerprint);
            // Held by a record: live anywhere, or revoked in this team. A revocation binds the
            // team that made it — another team's revoked pin is no claim, or an admin could
            // pin a public certificate, revoke it, and keep its owner from ever adding it.
            // Renewed identities' records count whether or not their consumer names its
            // profile right now: a profile switched off and on again would find its
            // certificate taken (THREATS row 95).
            let store = self.store()?;
            let mut records = store.records(Kind::Consumer)?;
            records.extend(store.records(Kind::Identity)?);
            let in_other_records = records.iter().any(|(t, _, r)| {
                r.certificates.iter().any(|c| {
                    c.fingerprint == checked.record.fingerprint
                        && (c.revoked_at.is_none() || t == team)
                })
            });
            let change: Change<'_, CertificateView> = Box::new(move |body, record, snapshot| {
                let policy = snapshot.policy();
                check_identity_domain(policy, team, checked.cn.as_deref())?;
                let pinned = policy
                    .consumers
                    .iter()
                    .any(|c| c.pins().any(|p| p.sha256 == checked.sha256));
                if pinned || in_other_records || tombstoned {
                    return Err(ManageError::CertificateInUse);
                }
                // The matcher authentication uses: a certificate another consumer's issuer
                // ACL claims (file-made or API-made) is that consumer's, not this one's.
                let cert = ClientCert::new(checked.der.clone().into());
                let claimed = snapshot
                    .identities()
                    .claimants(policy, &cert)
                    .into_iter()
                    .any(|i| body.name != policy.consumers[i].name);
                if claimed {
                    return Err(ManageError::IdentityClaimed);
                }
                let live = record
                    .certificates
                    .iter()
                    .filter(|c| certificates::is_live(c, now))
                    .count();
                if live >= certificates::MAX_LIVE {
                    return Err(ManageError::Invalid {
                        field: "certificate",
                        message: "at most 16 scheduled or active certificates per consumer"
                            .to_owned(),
                    });
                }
                body.cert_sha256.push(PinBody {
                    fingerprint: checked.record.fingerprint.clone(),
                    not_before: checked.record.starts_at.clone(),
                    not_after: checked.record.ends_at.clone(),
                });
                record.certificates.push(checked.record.clone());
                Ok(CertificateView::of(&checked.record, now))
            });
            let (_, added) = self
                .change_consumer(caller, team, name, None, change)
                .await?;
            Ok(added)
        };
        self.one_write(Action::ConsumerCertificateAdd, caller, team, &subject, work)
            .await
    }

    /// Revokes a consumer's certificate: it stops identifying anyone with the reload (on every
    /// replica within its poll), and cannot be added again.
    pub async fn revoke_consumer_certificate(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        fingerprint: &str,
    ) -> Result<CertificateView, ManageError> {
        let fingerprint = normalize_fingerprint(fingerprint);
        let subject = format!("{name}/certificates/{fingerprint}");
        let change: Change<'_, CertificateView> = Box::new(|body, record, _| {
            let cert = record
                .certificates
                .iter_mut()
                .find(|c| c.fingerprint == fingerprint && c.revoked_at.is_none())
                .ok_or(ManageError::NotFound)?;
            cert.revoked_at = Some(crate::store::now());
            let view = CertificateView::of(cert, SystemTime::now());
            body.cert_sha256
                .retain(|p| normalize_fingerprint(&p.fingerprint) != fingerprint);
            Ok(view)
        });
        let work = self.change_consumer(caller, team, name, None, change);
        let work = async { work.await.map(|(_, v)| v) };
        self.one_write(
            Action::ConsumerCertificateRevoke,
            caller,
            team,
            &subject,
            work,
        )
        .await
    }

    /// Lifts the tombstone of a fingerprint revoked in `team` whose consumer is gone: the
    /// operator's (or a global admin's) decision alone — a team admin cannot undo a
    /// revocation by deleting the consumer that held it.
    pub async fn lift_revoked(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        fingerprint: &str,
    ) -> Result<(), ManageError> {
        let fingerprint = normalize_fingerprint(fingerprint);
        let subject = format!("revoked/{fingerprint}");
        let work = async {
            if !caller.may_administer() {
                return Err(ManageError::NotAllowed(team.to_string()));
            }
            let store = self.store()?;
            if !store.revoked(team).await?.contains(&fingerprint) {
                return Err(ManageError::NotFound);
            }
            store
                .change_revoked(team, |set| {
                    set.remove(&fingerprint);
                })
                .await
                .map_err(|e| lost_race(e, true))
        };
        self.one_write(
            Action::ConsumerCertificateLift,
            caller,
            team,
            &subject,
            work,
        )
        .await
    }

    /// Sets (`Some`, with `[server] client_ca`'s certificates) or removes (`None`) a
    /// consumer's issuer ACL.
    pub async fn set_issuer_acl(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        acl: Option<(AclInput, &[Vec<u8>])>,
        if_match: Option<&str>,
    ) -> Result<ManagedConsumer, ManageError> {
        let work = async {
            // Authorized first: a caller who may not manage the team learns nothing from
            // how its ACL would have been judged.
            self.authorize(caller, team)?;
            let checked = acl
                .map(|(acl, client_cas)| check_acl(acl, client_cas))
                .transpose()?;
            // Certificates API-made consumers are pinned to: live ones, and this team's
            // revoked ones (a revocation binds the team that made it, as for pins).
            let pinned: Vec<(EntryName, Vec<u8>)> = match &checked {
                None => Vec::new(),
                Some(_) => {
                    let store = self.store()?;
                    let mut records = store.records(Kind::Consumer)?;
                    records.extend(store.records(Kind::Identity)?);
                    records
                        .into_iter()
                        .flat_map(|(t, n, r)| {
                            let own = t == *team;
                            r.certificates
                                .into_iter()
                                .filter(move |c| c.revoked_at.is_none() || own)
                                .filter_map(|c| c.certificate)
                                .filter_map(|b| {
                                    use base64::Engine as _;
                                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                                })
                                .map(move |der| (n.clone(), der))
                        })
                        .collect()
                }
            };
            let change: Change<'_, ()> = Box::new(move |body, _, snapshot| {
                match checked {
                    None => {
                        body.issuer_ca_pem = None;
                        body.subject = None;
                    }
                    Some(acl) => {
                        let policy = snapshot.policy();
                        // An ACL claims many certificates: only in the team's own identity
                        // domains, which the operator gives it.
                        let domains = policy.identity_domains.get(team.as_str());
                        if domains.is_none_or(Vec::is_empty) {
                            return Err(ManageError::CertificateRejected {
                                code: "no_identity_domain",
                                message: "issuer ACLs through the API need the team's identity_domains in the policy".to_owned(),
                            });
                        }
                        if !domains.is_some_and(|d| d.iter().any(|d| acl.pattern.within_domain(d)))
                        {
                            return Err(ManageError::CertificateRejected {
                                code: "outside_identity_domain",
                                message: "subject: its CN must be in one of the team's identity_domains (`CN=*.<domain>`)".to_owned(),
                            });
                        }
                        // Issuers compared by public key, as authentication matches them.
                        let overlaps = policy.consumers.iter().any(|c| {
                            body.name != c.name
                                && crate::policy::issuer_keys(&c.issuer_certs)
                                    .iter()
                                    .any(|k| acl.keys.contains(k))
                                && c.subject.as_ref().is_some_and(|s| s.overlaps(&acl.pattern))
                        });
                        if overlaps {
                            return Err(ManageError::AclOverlap);
                        }
                        let claims_a_pin = pinned.iter().any(|(owner, der)| {
                            *owner != body.name
                                && crate::identity::acl_matches(
                                    &acl.keys,
                                    &acl.pattern,
                                    &ClientCert::new(der.clone().into()),
                                )
                        });
                        if claims_a_pin {
                            return Err(ManageError::IdentityClaimed);
                        }
                        body.issuer_ca_pem = Some(acl.pem);
                        body.subject = Some(acl.subject);
                    }
                }
                Ok(())
            });
            let changed = self.change_consumer(caller, team, name, if_match.map(Ok), change);
            changed.await.map(|(m, ())| m)
        };
        self.one_write(Action::ConsumerIssuerAcl, caller, team, name, work)
            .await
    }

    /// A consumer of the store as management shows it, with its ETag.
    pub fn managed_consumer(
        &self,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<ManagedConsumer>, ManageError> {
        let Some((toml_text, record)) = stored(self.store()?, Kind::Consumer, team, name)? else {
            return Ok(None);
        };
        let body = parse(&toml_text)?;
        Ok(Some(view(&body, &record, etag(&toml_text, &record))))
    }

    /// Every consumer of `team` in the store.
    pub fn managed_consumers(&self, team: &str) -> Result<Vec<ManagedConsumer>, ManageError> {
        let mut out = Vec::new();
        for (t, name, _) in self.store()?.records(Kind::Consumer)? {
            if t == *team
                && let Some(m) = self.managed_consumer(&t, &name)?
            {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `admin_teams` a caller may give: known teams it manages itself.
    fn check_admin_teams(
        &self,
        caller: &Caller,
        teams: &[TeamSlug],
        policy: &crate::policy::Policy,
    ) -> Result<(), ManageError> {
        // Authorized first: a team the caller may not manage and one that does not exist
        // answer alike, so the answer is no oracle of other teams.
        for t in teams {
            if !caller.may_manage(t) {
                return Err(ManageError::NotAllowed(t.to_string()));
            }
            if !policy.teams.iter().any(|p| *t == *p) {
                return Err(ManageError::Invalid {
                    field: "admin_teams",
                    message: format!("unknown team `{t}`"),
                });
            }
        }
        Ok(())
    }

    /// One change of a stored consumer: read, check the ETag (`Some(Err)`: required and
    /// missing), apply, commit with check-and-set, reload (or put back what the policy
    /// refuses).
    async fn change_consumer<R>(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<Result<&str, ManageError>>,
        change: Change<'_, R>,
    ) -> Result<(ManagedConsumer, R), ManageError> {
        let store = self.store()?;
        self.authorize(caller, team)?;
        let (toml_text, record) =
            stored(store, Kind::Consumer, team, name)?.ok_or(ManageError::NotFound)?;
        if let Some(m) = if_match
            && m? != etag(&toml_text, &record)
        {
            return Err(ManageError::Stale);
        }
        let mut body = parse(&toml_text)?;
        let mut next = record.clone();
        next.version += 1;
        next.revision += 1;
        next.updated_at = crate::store::now();
        next.updated_by = who(caller);
        let snapshot = self.broker.policy();
        let out = change(&mut body, &mut next, &snapshot)?;
        let new_text = render(&body)?;
        store
            .commit(Kind::Consumer, team, name, &new_text, &next, Some(&record))
            .await
            .map_err(|e| lost_race(e, true))?;
        self.reload_or_restore(
            Kind::Consumer,
            team,
            name,
            &next,
            Some((&toml_text, &record)),
        )
        .await?;
        Ok((view(&body, &next, etag(&new_text, &next)), out))
    }
}

/// A pinned certificate's CN against the identity domains: one in another team's domain is
/// that team's to claim (409, naming nobody); a team with domains pins only inside them.
fn check_identity_domain(
    policy: &crate::policy::Policy,
    team: &TeamSlug,
    cn: Option<&str>,
) -> Result<(), ManageError> {
    let owner = cn.and_then(|cn| policy.identity_domain_of(cn));
    if owner.is_some_and(|t| *team != *t) {
        return Err(ManageError::IdentityClaimed);
    }
    let has_domains = policy
        .identity_domains
        .get(team.as_str())
        .is_some_and(|d| !d.is_empty());
    if has_domains && owner.is_none() {
        return Err(ManageError::CertificateRejected {
            code: "outside_identity_domain",
            message: "its CN must be in one of the team's identity_domains".to_owned(),
        });
    }
    Ok(())
}

fn check_host(host: Option<&str>) -> Result<(), ManageError> {
    match host {
        Some(h) => crate::policy::Destination::parse(h)
            .map(|_| ())
            .map_err(|e| ManageError::Invalid {
                field: "vault_api_host",
                message: e.to_string(),
            }),
        None => Ok(()),
    }
}

/// AppRole options that passed every check, in their stored form.
struct CheckedApprole {
    expires_at: Option<String>,
    secret_id_bound_cidrs: Vec<String>,
    token_bound_cidrs: Vec<String>,
}

fn check_approle(input: &ApproleInput, now: SystemTime) -> Result<CheckedApprole, ManageError> {
    if input.secret_id_num_uses.is_some_and(|n| n != 0) {
        return Err(ManageError::Unsupported {
            field: "secret_id_num_uses",
            message: NUM_USES_REFUSED,
        });
    }
    let expires_at = match input.secret_id_ttl.filter(|t| !t.is_zero()) {
        None => None,
        Some(ttl) if ttl > MAX_SECRET_ID_TTL => {
            return Err(ManageError::Invalid {
                field: "secret_id_ttl",
                message: "at most ten years (0: no expiry)".to_owned(),
            });
        }
        Some(ttl) => Some(humantime::format_rfc3339_seconds(now + ttl).to_string()),
    };
    let nets = |field: &'static str, list: &[String]| -> Result<Vec<String>, ManageError> {
        let invalid = |message: String| ManageError::Invalid { field, message };
        if list.len() > crate::policy::MAX_BOUND_CIDRS {
            return Err(invalid(format!(
                "at most {} CIDR blocks",
                crate::policy::MAX_BOUND_CIDRS
            )));
        }
        list.iter()
            .map(|n| {
                crate::policy::parse_net(n)
                    .map(|n| n.to_string())
                    .ok_or_else(|| {
                        invalid(
                            "each is a CIDR block without host bits (`10.0.0.0/8`) or an address"
                                .to_owned(),
                        )
                    })
            })
            .collect()
    };
    Ok(CheckedApprole {
        expires_at,
        secret_id_bound_cidrs: nets("secret_id_bound_cidrs", &input.secret_id_bound_cidrs)?,
        token_bound_cidrs: nets("token_bound_cidrs", &input.token_bound_cidrs)?,
    })
}

/// A fresh `role_id`: 128 random bits from the OS generator, in Vault's UUID shape.
fn new_role_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator is available");
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An issuer ACL that passed every check.
struct CheckedAcl {
    /// The CA certificates as stored (PEM).
    pem: String,
    /// Their public keys (SubjectPublicKeyInfo DER): what authentication matches.
    keys: Vec<Vec<u8>>,
    pattern: crate::policy::SubjectPattern,
    subject: String,
}

/// Checks an issuer ACL. Apinizer's flags must be on: keybroker always checks the chain and
/// the issuer, and a caller who asked for less learns it rather than getting a silently
/// different check. Each CA must be a certificate of `client_ca` or be signed by one: a
/// self-made CA certificate carrying another CA's public key is neither.
fn check_acl(acl: AclInput, client_cas: &[Vec<u8>]) -> Result<CheckedAcl, ManageError> {
    for (field, on) in [
        ("validate_certificate", acl.validate_certificate),
        ("validate_acl_for_issuer", acl.validate_acl_for_issuer),
    ] {
        if !on {
            return Err(ManageError::Invalid {
                field,
                message: "keybroker always validates the chain and the issuer; false is refused"
                    .to_owned(),
            });
        }
    }
    let pattern =
        crate::policy::SubjectPattern::parse(&acl.subject).map_err(|why| ManageError::Invalid {
            field: "subject",
            message: why.to_owned(),
        })?;
    if acl.issuer_ca.len() > 64 << 10 {
        return Err(ManageError::Invalid {
            field: "issuer_ca",
            message: "at most 64 KiB".to_owned(),
        });
    }
    if client_cas.is_empty() {
        return Err(ManageError::CertificateRejected {
            code: "no_client_ca",
            message: "this server verifies no client certificates ([server] client_ca is not set)"
                .to_owned(),
        });
    }
    let repaired =
        crate::pem::repair(&acl.issuer_ca, &crate::pem::Options::default()).map_err(|e| {
            ManageError::CertificateRejected {
                code: "certificate_invalid",
                message: format!("issuer_ca: {}", e.code()),
            }
        })?;
    let ders = crate::policy::pem_certificates(repaired.pem.as_bytes()).map_err(|_| {
        ManageError::CertificateRejected {
            code: "certificate_invalid",
            message: "issuer_ca: no CERTIFICATE block".to_owned(),
        }
    })?;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let all_ca = ders.len() <= 8
        && ders
            .iter()
            .all(|d| X509Certificate::from_der(d).is_ok_and(|(_, c)| c.is_ca()));
    if !all_ca {
        return Err(ManageError::CertificateRejected {
            code: "issuer_not_ca",
            message: "issuer_ca: at most 8 CA certificates".to_owned(),
        });
    }
    let anchors = crate::policy::issuer_keys(client_cas);
    let anchored = ders.iter().all(|d| {
        client_cas.contains(d)
            || X509Certificate::from_der(d).is_ok_and(|(_, c)| {
                anchors.iter().any(|spki| {
                    x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
                        .is_ok_and(|(_, key)| c.verify_signature(Some(&key)).is_ok())
                })
            })
    });
    if !anchored {
        return Err(ManageError::CertificateRejected {
            code: "issuer_untrusted",
            message: "issuer_ca: each CA must be a certificate of [server] client_ca or be \
                      signed by one"
                .to_owned(),
        });
    }
    Ok(CheckedAcl {
        pem: repaired.pem.to_string(),
        keys: crate::policy::issuer_keys(&ders),
        pattern,
        subject: acl.subject,
    })
}

fn view(body: &Body, record: &Record, etag: String) -> ManagedConsumer {
    let now = SystemTime::now();
    let issuer_acl = body.issuer_ca_pem.as_ref().map(|pem| AclView {
        issuers: crate::policy::pem_certificates(pem.as_bytes())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| {
                use x509_parser::prelude::{FromDer, X509Certificate};
                X509Certificate::from_der(d)
                    .ok()
                    .map(|(_, c)| c.subject().to_string())
            })
            .collect(),
        subject: body.subject.clone().unwrap_or_default(),
        validate_certificate: true,
        validate_acl_for_issuer: true,
    });
    ManagedConsumer {
        name: body.name.clone(),
        team: body.team.clone(),
        admin_teams: body.admin_teams.clone(),
        vault_api_host: body.vault_api_host.clone(),
        has_token: body.token_sha256.is_some(),
        certificates: record
            .certificates
            .iter()
            .map(|c| CertificateView::of(c, now))
            .collect(),
        issuer_acl,
        approle: body.approle.as_ref().map(|a| ApproleView {
            role_id: a.role_id.clone(),
            secret_id_expires_at: a.secret_id_expires_at.clone(),
            secret_id_bound_cidrs: a.secret_id_bound_cidrs.clone(),
            token_bound_cidrs: a.token_bound_cidrs.clone(),
        }),
        origin: "api",
        version: record.version,
        created_at: record.created_at.clone(),
        updated_at: record.updated_at.clone(),
        updated_by: record.updated_by.clone(),
        etag,
    }
}
