//! A consumer's `identity_profile` (the signing profile that renews its own certificate) and
//! the pins of the certificates it renewed (`[[identity_pin]]`, written by keybroker into the
//! store). A certificate identifies one consumer or none: the profile is one consumer's, no
//! credential's, and no other consumer's issuer ACL matches its names (docs/PKI.md).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Files, Holder, Item, KnownSources, Policy, key};
use crate::policy::model::{IdentityProfile, Origin, Pin};

/// A renewed certificate's pin, as the store keeps it beside the operator's consumer.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentityPinDef {
    consumer: String,
    team: String,
    /// Hex SHA-256 of the certificate's DER.
    fingerprint: String,
    /// The certificate's own end (RFC 3339): the pin identifies until then.
    not_after: String,
    /// The consumer's [`identity_root`](crate::policy::Consumer::identity_root) when it
    /// renewed: the pin counts only while the operator's identity of it is the same.
    root: String,
}

/// Where a load found what this file checks: issuer ACLs (item, team, consumer index),
/// `identity_profile`s (item, consumer index, text), and every pinned fingerprint's holder.
pub(super) struct ConsumerItems {
    pub acl: Vec<(Item<()>, String, usize)>,
    pub profiles: Vec<(Item<()>, usize, String)>,
    pub pins: BTreeMap<[u8; 32], Holder>,
}

/// Consumer `c`'s `identity_profile` as it is written (it becomes consumer `index`): only an
/// operator's file names one — a team admin choosing it would choose names the PKI trusts.
pub(super) fn profile_item(
    files: &mut Files,
    c: &Item<std::sync::Arc<super::ConsumerDef>>,
    index: usize,
) -> Option<(Item<()>, usize, String)> {
    let profile = c.def.identity_profile.as_ref()?;
    if files.managed[c.file] {
        files.at(
            c,
            &key("identity_profile"),
            "identity_profile is named by the operator's policy files only".to_owned(),
        );
    }
    let at = Item {
        def: (),
        file: c.file,
        span: c.span.clone(),
        keys: c.keys.clone(),
    };
    Some((at, index, profile.clone()))
}

/// `text` (`<source>:<profile>`, or `<profile>` when one pki source has it) as a known
/// signing profile; `Err` says why not.
fn resolve(text: &str, known: &KnownSources) -> Result<IdentityProfile, String> {
    let found: Vec<&(String, String)> = known
        .pki_names
        .keys()
        .filter(|(source, profile)| match text.split_once(':') {
            Some((s, p)) => s == source && p == profile,
            None => text == profile,
        })
        .collect();
    let (source, profile) = match found.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(format!("identity_profile {text:?}: no such pki profile")),
        _ => {
            return Err(format!(
                "identity_profile {text:?}: several pki sources have it; write <source>:<profile>"
            ));
        }
    };
    if !known.signing.contains(&(source.clone(), profile.clone())) {
        return Err(format!(
            "identity_profile {text:?} is not a signing profile (issue = \"sign\")"
        ));
    }
    Ok(IdentityProfile { source, profile })
}

/// Resolves each consumer's `identity_profile` and refuses what would let a renewed
/// certificate identify anyone else: an unknown or issuing profile, one named twice, one a
/// credential also uses, one whose names lie in another team's `identity_domains`, and an
/// issuer ACL of any other consumer matching its common name.
pub(super) fn check_profiles(
    files: &mut Files,
    policy: &mut Policy,
    items: &ConsumerItems,
    credentials: &[Item<usize>],
    sources: Option<&KnownSources>,
) {
    let mut owners: BTreeMap<(String, String), String> = BTreeMap::new();
    for (item, i, text) in &items.profiles {
        let Some(known) = sources else {
            policy.consumers[*i].identity_profile = Some(IdentityProfile {
                source: String::new(),
                profile: text.clone(),
            });
            continue;
        };
        let profile = match resolve(text, known) {
            Ok(p) => p,
            Err(why) => {
                files.at(item, &key("identity_profile"), why);
                continue;
            }
        };
        let pair = (profile.source.clone(), profile.profile.clone());
        let name = policy.consumers[*i].name.clone();
        if let Some(first) = owners.insert(pair.clone(), name.clone()) {
            files.at(
                item,
                &key("identity_profile"),
                format!("consumer `{first}` has the same identity_profile: a certificate identifies one consumer"),
            );
        }
        let names = known.pki_names.get(&pair).cloned().unwrap_or_default();
        let team = policy.consumers[*i].team.clone();
        for n in &names {
            if let Some(owner) = policy.identity_domain_of(n).filter(|o| *o != team) {
                files.at(
                    item,
                    &key("identity_profile"),
                    format!("identity_profile {text:?} gives certificates for {n:?}, in the identity_domains of team `{owner}`"),
                );
            }
        }
        refuse_matching_acls(files, policy, items, *i, names.first().map(String::as_str));
        policy.consumers[*i].identity_profile = Some(profile);
    }
    refuse_credentials_using(files, policy, credentials, &owners, sources);
}

/// An issuer ACL of any consumer but `owner` whose subject matches `cn` would claim the
/// renewed certificates too (whatever its CA: not known offline): refused at that ACL.
fn refuse_matching_acls(
    files: &mut Files,
    policy: &Policy,
    items: &ConsumerItems,
    owner: usize,
    cn: Option<&str>,
) {
    for (acl, _, j) in &items.acl {
        let c = &policy.consumers[*j];
        let matches = c
            .subject
            .as_ref()
            .is_some_and(|s| s.matches(&[("2.5.4.3", cn)]));
        if *j != owner && matches {
            files.at(
                acl,
                &key("subject"),
                format!(
                    "this issuer ACL matches the certificates consumer `{}` renews through its identity_profile: a certificate identifies one consumer",
                    policy.consumers[owner].name
                ),
            );
        }
    }
}

/// A credential referencing a profile some consumer renews its identity with would hand
/// that consumer's identity to the credential's readers.
fn refuse_credentials_using(
    files: &mut Files,
    policy: &Policy,
    credentials: &[Item<usize>],
    owners: &BTreeMap<(String, String), String>,
    sources: Option<&KnownSources>,
) {
    let Some(known) = sources else { return };
    for item in credentials {
        let cred = &policy.credentials[item.def];
        let staged = cred.next.iter().flat_map(|n| &n.values.by_role);
        for (role, r) in cred.values.by_role.iter().chain(staged) {
            let (Ok(source), Ok(path)) = (
                known.source_of(&r.target),
                crate::policy::path_of(&r.target),
            ) else {
                continue;
            };
            if let Some(consumer) = owners.get(&(source.to_owned(), path.to_string())) {
                files.at(
                    item,
                    &key(role),
                    format!("`{source}:{path}` is consumer `{consumer}`'s identity_profile: no credential may use it"),
                );
            }
        }
    }
}

/// Attaches each `[[identity_pin]]` of the store to its consumer — an operator's consumer of
/// that team that still names an `identity_profile` and whose identity root is the one it
/// renewed from; a pin of anyone else is dropped (the file stopped naming the profile, or
/// its first certificate was replaced). A pin in an operator's file, or a fingerprint another
/// consumer pins, is an error (a store entry with one is set aside).
pub(super) fn attach_renewed(
    files: &mut Files,
    policy: &mut Policy,
    pins: Vec<Item<std::sync::Arc<IdentityPinDef>>>,
    items: &ConsumerItems,
) {
    let mut taken: BTreeMap<[u8; 32], String> = items
        .pins
        .iter()
        .map(|(fp, h)| (*fp, h.name.clone()))
        .collect();
    for item in pins {
        let def = &item.def;
        if !files.managed[item.file] {
            files.at(
                &item,
                &key("consumer"),
                "identity_pin is written by keybroker into the store, not in policy files"
                    .to_owned(),
            );
            continue;
        }
        let mut fp = [0u8; 32];
        let not_after = crate::policy::rfc3339(&def.not_after);
        let (Ok(()), Some(not_after)) =
            (hex::decode_to_slice(&def.fingerprint, &mut fp), not_after)
        else {
            files.at(
                &item,
                &key("fingerprint"),
                "identity_pin needs a hex SHA-256 fingerprint and an RFC 3339 not_after".to_owned(),
            );
            continue;
        };
        let Some(c) = policy.consumers.iter_mut().find(|c| {
            c.name == def.consumer
                && c.team == def.team
                && c.origin == Origin::File
                && c.identity_profile.is_some()
                && c.identity_root() == def.root
        }) else {
            continue;
        };
        if let Some(other) = taken.insert(fp, c.name.clone()).filter(|o| *o != c.name) {
            files.at(
                &item,
                &key("fingerprint"),
                format!("consumer `{other}` pins this fingerprint too"),
            );
            // A team admin's entry pinning it too is set aside as well: the certificate
            // then identifies nobody, never the wrong consumer.
            if let Some(first) = items.pins.get(&fp) {
                first.also_errs(
                    files,
                    &item,
                    "a renewed identity's pin holds this fingerprint",
                );
            }
            continue;
        }
        c.renewed.0.push(Pin {
            sha256: fp,
            not_before: None,
            not_after: Some(not_after),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{KnownSources, PolicyError, load_checked_dirs};

    const FP: &str = "aa00000000000000000000000000000000000000000000000000000000000001";

    fn known() -> KnownSources {
        let pair = ("pki".to_owned(), "agent-id".to_owned());
        KnownSources {
            names: ["pki".to_owned()].into(),
            signing: [pair.clone()].into(),
            pki_names: [(pair, vec!["agent.payments.example".to_owned()])].into(),
            ..KnownSources::default()
        }
    }

    fn operator(dir: &Path, profile: bool, extra: &str) {
        let profile = if profile {
            "identity_profile = \"agent-id\"\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join("p.toml"),
            format!("[[team]]\nslug = \"payments\"\n[[team]]\nslug = \"other\"\n[[consumer]]\nname = \"agent\"\nteam = \"payments\"\ntoken_sha256 = \"{}\"\n{profile}{extra}", "ab".repeat(32)),
        )
        .unwrap();
    }

    /// The identity root of a consumer the operator gave no pin and no issuer ACL: the
    /// SHA-256 of nothing.
    const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn pin_from(root: &str) -> String {
        format!(
            "[[identity_pin]]\nconsumer = \"agent\"\nteam = \"payments\"\nfingerprint = \"{FP}\"\nnot_after = \"2999-01-01T00:00:00Z\"\nroot = \"{root}\"\n"
        )
    }

    fn pin() -> String {
        pin_from(EMPTY_ROOT)
    }

    /// A store's identity pin attaches to the operator's consumer while its file names the
    /// profile; a team admin's consumer pinning the same fingerprint sets both aside; a pin in
    /// an operator's file is refused.
    #[test]
    fn identity_pins_are_the_stores_and_identify_one_consumer_or_none() {
        let (ops, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dirs = [ops.path().to_owned()];
        let stores = [store.path().to_owned()];
        operator(ops.path(), true, "");
        std::fs::write(store.path().join("agent.toml"), pin()).unwrap();
        let p = load_checked_dirs(&dirs, &stores, &known()).unwrap();
        assert_eq!(p.consumers[0].renewed.0.len(), 1);
        assert!(p.quarantined.is_empty());
        // Renewed from another identity of the consumer (a first certificate since replaced):
        // not attached.
        std::fs::write(store.path().join("agent.toml"), pin_from(&"0".repeat(64))).unwrap();
        let p = load_checked_dirs(&dirs, &stores, &known()).unwrap();
        assert!(p.consumers[0].renewed.0.is_empty());
        assert!(p.quarantined.is_empty());
        std::fs::write(store.path().join("agent.toml"), pin()).unwrap();
        // The file no longer names the profile: the pin is dropped, nothing refused.
        operator(ops.path(), false, "");
        let p = load_checked_dirs(&dirs, &stores, &known()).unwrap();
        assert!(p.consumers[0].renewed.0.is_empty());
        // A team admin's consumer pinning it too: both set aside.
        operator(ops.path(), true, "");
        std::fs::write(
            store.path().join("thief.toml"),
            format!("[[consumer]]\nname = \"thief\"\nteam = \"other\"\ncert_sha256 = [{{ fingerprint = \"{FP}\" }}]\n"),
        )
        .unwrap();
        let p = load_checked_dirs(&dirs, &stores, &known()).unwrap();
        assert!(p.consumers[0].renewed.0.is_empty());
        assert!(p.consumers.iter().all(|c| c.name != "thief"));
        assert_eq!(p.quarantined.len(), 2, "{:?}", p.quarantined);
        // In the operator's file: refused.
        std::fs::remove_file(store.path().join("thief.toml")).unwrap();
        operator(ops.path(), true, &pin());
        let refused = load_checked_dirs(&dirs, &stores, &known());
        assert!(matches!(refused, Err(PolicyError::Invalid(_))));
    }
}
