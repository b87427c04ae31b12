//! `PATCH` of a stored credential's definition (who may read it, where, what it says of
//! itself) without touching its material, and its version history. The definition is
//! changed as the policy file it is: its value references stay as they were.

use std::collections::BTreeMap;

use super::{ManageError, Managed, Manager, etag, lost_race, stored, who};
use crate::audit::Action;
use crate::broker::Caller;
use crate::policy::ReadAccess;
use crate::store::{EntryName, Kind, TeamSlug};

/// The definition fields a `PATCH` may change; those given change, the others stay.
#[derive(Debug, Default)]
pub struct CredentialPatch {
    pub read_access: Option<ReadAccess>,
    pub shared_team_slugs: Option<Vec<TeamSlug>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub description: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Tines' name and folder (the Tines-shaped update).
    pub display_name: Option<String>,
    pub folder_id: Option<u64>,
}

impl CredentialPatch {
    /// The names of the fields given (for the audit line).
    fn fields(&self) -> Vec<&'static str> {
        [
            ("read_access", self.read_access.is_some()),
            ("shared_team_slugs", self.shared_team_slugs.is_some()),
            ("allowed_hosts", self.allowed_hosts.is_some()),
            ("description", self.description.is_some()),
            ("metadata", self.metadata.is_some()),
            ("name", self.display_name.is_some()),
            ("folder_id", self.folder_id.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, given)| given.then_some(f))
        .collect()
    }
}

fn malformed() -> ManageError {
    crate::store::StoreError::Malformed("a stored credential definition".into()).into()
}

impl Manager {
    /// Changes definition fields of a stored credential. `If-Match` is required unless
    /// `precondition_optional` (Tines' update sends none; a given one is still checked).
    pub async fn patch_credential(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        patch: CredentialPatch,
        if_match: super::IfMatch<'_>,
    ) -> Result<Managed, ManageError> {
        let subject = format!("{name}#{}", patch.fields().join(","));
        let work = async {
            if_match.given()?;
            let store = self.store()?;
            self.authorize(caller, team)?;
            let (toml_text, record) =
                stored(store, Kind::Credential, team, name)?.ok_or(ManageError::NotFound)?;
            if_match.check(&etag(&toml_text, &record))?;
            if patch.read_access == Some(ReadAccess::Global) && !caller.may_administer() {
                return Err(ManageError::GlobalNotAllowed);
            }
            super::check_definition(
                patch.metadata.as_ref(),
                patch.allowed_hosts.as_deref(),
                patch.shared_team_slugs.as_deref(),
                patch.description.as_deref(),
            )?;
            let mut table: toml::Table = toml::from_str(&toml_text).map_err(|_| malformed())?;
            let body = table
                .get_mut("credential")
                .and_then(|c| c.as_array_mut())
                .and_then(|a| a.first_mut())
                .and_then(|b| b.as_table_mut())
                .ok_or_else(malformed)?;
            if let Some(v) = &patch.read_access {
                body.insert("read_access".into(), value(v)?);
            }
            if let Some(v) = &patch.shared_team_slugs {
                body.insert("shared_team_slugs".into(), value(v)?);
            }
            if let Some(v) = &patch.allowed_hosts {
                body.insert("allowed_hosts".into(), value(v)?);
            }
            if let Some(v) = &patch.description {
                body.insert("description".into(), value(v)?);
            }
            if let Some(v) = &patch.metadata {
                body.insert("metadata".into(), value(v)?);
            }
            let new_text = toml::to_string(&table).map_err(|_| malformed())?;
            let mut next = record.clone();
            next.revision += 1;
            next.updated_at = crate::store::now();
            next.updated_by = who(caller);
            if let Some(n) = &patch.display_name {
                next.display_name = Some(n.clone());
            }
            if let Some(f) = patch.folder_id {
                next.folder_id = Some(f);
            }
            store
                .commit(
                    Kind::Credential,
                    team,
                    name,
                    &new_text,
                    &next,
                    Some(&record),
                )
                .await
                .map_err(|e| lost_race(e, true))?;
            self.reload_or_restore(
                Kind::Credential,
                team,
                name,
                &next,
                Some((&toml_text, &record)),
            )
            .await?;
            self.managed_credential(team, name)?
                .ok_or(ManageError::NotFound)
        };
        self.one_write(Action::CredentialUpdate, caller, team, &subject, work)
            .await
    }
}

/// A patch field as a TOML value.
fn value<T: serde::Serialize>(v: &T) -> Result<toml::Value, ManageError> {
    toml::Value::try_from(v).map_err(|_| malformed())
}
