//! The management reads — a credential or consumer as the store holds it, a credential's
//! versions, the lists, the Tines lookups — decided here like the writes (the caller manages
//! the team), each with an audit line. A read of a team the caller may not manage, and of a
//! team that does not exist, answer alike; a list holds only the caller's teams.

use std::time::Instant;

use super::{ManageError, Managed, ManagedConsumer, Manager, stored};
use crate::audit::{Action, Outcome};
use crate::broker::{AuditEntry, Caller};
use crate::store::{EntryName, Kind, TeamSlug, VersionRecord};

impl Manager {
    /// Runs one read for `team`: authorized first, then audited with its outcome.
    async fn one_read<T>(
        &self,
        caller: &Caller,
        team: Option<&TeamSlug>,
        subject: String,
        work: impl FnOnce() -> Result<T, ManageError>,
    ) -> Result<T, ManageError> {
        let started = Instant::now();
        let result = match team {
            Some(t) => self.authorize(caller, t).and_then(|()| work()),
            None => work(),
        };
        let (decision, reason) = match &result {
            Ok(_) => (Outcome::Allowed, "allowed"),
            Err(ManageError::NotAllowed(_)) => (Outcome::Denied, "not_allowed"),
            Err(e) => (Outcome::Failed, e.code()),
        };
        self.broker
            .audit(AuditEntry {
                subjects: vec![subject],
                ..AuditEntry::new(Action::ManageRead, Some(caller), decision, reason, started)
            })
            .await
            .map_err(ManageError::from)?;
        result
    }

    /// `GET /v1/teams/{team}/credentials/{name}`.
    pub async fn show_credential(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Managed, ManageError> {
        self.one_read(caller, Some(team), format!("{team}/{name}"), || {
            self.managed_credential(team, name)?
                .ok_or(ManageError::NotFound)
        })
        .await
    }

    /// A stored credential's material versions, newest first: who wrote each when, and its
    /// certificate's fingerprint and `notAfter` — never a value.
    pub async fn credential_versions(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Vec<VersionRecord>, ManageError> {
        self.one_read(
            caller,
            Some(team),
            format!("{team}/{name}#versions"),
            || {
                let (_, record) = stored(self.store()?, Kind::Credential, team, name)?
                    .ok_or(ManageError::NotFound)?;
                Ok(record.history.into_iter().rev().collect())
            },
        )
        .await
    }

    /// The store's credentials of the teams `caller` manages (Tines' list).
    pub async fn list_credentials(&self, caller: &Caller) -> Result<Vec<Managed>, ManageError> {
        self.one_read(caller, None, "credentials".to_owned(), || {
            Ok(self
                .managed_credentials()?
                .into_iter()
                .filter(|m| caller.may_manage(&m.team))
                .collect())
        })
        .await
    }

    /// The credential of Tines' numeric `id`, among the teams `caller` manages (one of another
    /// team is not found, as one that does not exist).
    pub async fn credential_by_id(&self, caller: &Caller, id: u64) -> Result<Managed, ManageError> {
        self.one_read(caller, None, format!("credentials#{id}"), || {
            self.managed_credentials()?
                .into_iter()
                .find(|m| m.record.id == id && caller.may_manage(&m.team))
                .ok_or(ManageError::NotFound)
        })
        .await
    }

    /// The team of credential `name` when the caller named none: the only team it manages
    /// that holds that name.
    pub fn team_of(
        &self,
        caller: &Caller,
        name: &EntryName,
        team: Option<TeamSlug>,
    ) -> Result<TeamSlug, ManageError> {
        if let Some(t) = team {
            return Ok(t);
        }
        let held: Vec<TeamSlug> = self
            .store()?
            .records(Kind::Credential)?
            .into_iter()
            .filter(|(t, n, _)| n == name && caller.may_manage(t))
            .map(|(t, _, _)| t)
            .collect();
        match <[TeamSlug; 1]>::try_from(held) {
            Ok([one]) => Ok(one),
            Err(v) if v.is_empty() => Err(ManageError::NotFound),
            Err(_) => Err(ManageError::TeamRequired),
        }
    }

    /// `GET /v1/teams/{team}/consumers/{name}`.
    pub async fn show_consumer(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<ManagedConsumer, ManageError> {
        self.one_read(caller, Some(team), format!("{team}/{name}"), || {
            self.managed_consumer(team, name)?
                .ok_or(ManageError::NotFound)
        })
        .await
    }

    /// `GET /v1/teams/{team}/consumers`.
    pub async fn list_consumers(
        &self,
        caller: &Caller,
        team: &TeamSlug,
    ) -> Result<Vec<ManagedConsumer>, ManageError> {
        self.one_read(caller, Some(team), format!("{team}/consumers"), || {
            self.managed_consumers(team)
        })
        .await
    }
}
