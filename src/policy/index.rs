//! Where a decision finds its consumer, its team's grants for a source and the credentials of
//! a name, without walking the policy: a shared installation holds thousands of each, and a
//! linear scan per reference cost ≈ 13 µs at 1,000 consumers and 2,000 grants
//! (docs/PERFORMANCE.md) — more than the rest of a cache hit.
//!
//! Positions, not copies: every list keeps the policy's order, so a decision considers the
//! same rules in the same order as a scan would.

use std::collections::HashMap;

#[derive(Clone, Debug)]
pub(super) struct Index {
    /// Consumer name → its position (names are unique; the first wins if not).
    consumers: HashMap<String, usize>,
    /// Team → source → positions of that team's grants for that source.
    grants: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Credential name → positions of the credentials of that name (one per team at most).
    credentials: HashMap<String, Vec<usize>>,
    /// The lengths indexed: a policy changed after its index was built is not indexed.
    sizes: (usize, usize, usize),
}

impl Index {
    /// From the policy's lists, by their keys in order: consumer names, grants' (team,
    /// source), credential names. Built from keys, not from the policy, so the model that
    /// holds the index and the index stay one-way.
    pub(super) fn build<'a>(
        consumers: impl ExactSizeIterator<Item = &'a str>,
        grants: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
        credentials: impl ExactSizeIterator<Item = &'a str>,
    ) -> Self {
        let sizes = (consumers.len(), grants.len(), credentials.len());
        let mut by_name = HashMap::with_capacity(sizes.0);
        for (i, name) in consumers.enumerate() {
            by_name.entry(name.to_owned()).or_insert(i);
        }
        let mut by_team: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, (team, source)) in grants.enumerate() {
            by_team
                .entry(team.to_owned())
                .or_default()
                .entry(source.to_owned())
                .or_default()
                .push(i);
        }
        let mut named: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, name) in credentials.enumerate() {
            named.entry(name.to_owned()).or_default().push(i);
        }
        Self {
            consumers: by_name,
            grants: by_team,
            credentials: named,
            sizes,
        }
    }

    /// Whether this index describes lists of these lengths (the policy as it is now).
    pub(super) fn describes(&self, sizes: (usize, usize, usize)) -> bool {
        self.sizes == sizes
    }

    pub(super) fn consumer(&self, name: &str) -> Option<usize> {
        self.consumers.get(name).copied()
    }

    pub(super) fn grants(&self, team: &str, source: &str) -> &[usize] {
        self.grants
            .get(team)
            .and_then(|by_source| by_source.get(source))
            .map_or(&[], Vec::as_slice)
    }

    pub(super) fn credentials(&self, name: &str) -> &[usize] {
        self.credentials.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The index as a field of the policy: built on first use, and printed as a word (a policy's
/// `Debug` should not list it twice).
#[derive(Default)]
pub(super) struct Lazy(pub(super) std::sync::OnceLock<Index>);

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "not built"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Consumer, Policy, Subject, load};

    fn policy() -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for t in ["a", "b", "c"] {
            text.push_str(&format!("[[team]]\nslug = \"{t}\"\n"));
        }
        for (i, t) in ["a", "b", "c", "a", "b"].iter().enumerate() {
            text.push_str(&format!(
                "[[consumer]]\nname = \"c{i}\"\nteam = \"{t}\"\ntoken_sha256 = \"{}\"\n",
                hex::encode([i as u8; 32])
            ));
        }
        // Names shared across teams (one own, one GLOBAL), grants of several sources per team.
        for (name, team, access) in [
            ("db", "a", "TEAM"),
            ("db", "b", "GLOBAL"),
            ("api", "c", "GLOBAL"),
            ("api", "a", "TEAM"),
            ("mq", "b", "TEAM"),
        ] {
            text.push_str(&format!(
                "[[credential]]\nname = \"{name}\"\nmode = \"text\"\nteam = \"{team}\"\n\
                 read_access = \"{access}\"\nallowed_hosts = [\"*.corp.example\"]\n\
                 value = \"$SECRET_{team}/{name} $KEY_v\"\n"
            ));
        }
        for (team, source, path) in [
            ("a", "vault", "a/one/*"),
            ("b", "vault", "b/**"),
            ("a", "ccp", "a/**"),
            ("a", "vault", "a/two/*"),
            ("c", "files", "c/*"),
        ] {
            text.push_str(&format!(
                "[[grant]]\nteam = \"{team}\"\nsource = \"{source}\"\npaths = [\"{path}\"]\n\
                 allowed_hosts = [\"*.corp.example\"]\n"
            ));
        }
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        load(dir.path()).unwrap()
    }

    /// Every lookup answers what a scan of the policy answers, in the policy's order.
    #[test]
    fn lookups_agree_with_a_scan_in_policy_order() {
        let p = policy();
        let index = p.index();
        for name in ["c0", "c1", "c4", "nobody", ""] {
            let scan = p.consumers.iter().position(|c| c.name == name);
            assert_eq!(index.consumer(name), scan, "{name}");
        }
        for team in ["a", "b", "c", "z"] {
            for source in ["vault", "ccp", "files", "none"] {
                let scan: Vec<usize> = (0..p.grants.len())
                    .filter(|&i| p.grants[i].team == team && p.grants[i].source == source)
                    .collect();
                assert_eq!(index.grants(team, source), scan, "{team} {source}");
            }
        }
        for name in ["db", "api", "mq", "none"] {
            let scan: Vec<usize> = (0..p.credentials.len())
                .filter(|&i| p.credentials[i].name == name)
                .collect();
            assert_eq!(index.credentials(name), scan, "{name}");
        }
    }

    /// A policy changed after it first decided is not decided on the old index.
    #[test]
    fn a_policy_grown_after_deciding_is_indexed_again() {
        let mut p = policy();
        let path = crate::reference::SecretPath::from_segments(["a", "one", "x"]).unwrap();
        let host = super::super::Destination::parse("gw.corp.example").unwrap();
        let ask = |p: &Policy, who: &str| {
            p.decide(
                who,
                Subject::Reference {
                    source: "vault",
                    path: &path,
                },
                Some(&host),
            )
            .allowed
        };
        assert!(ask(&p, "c0"));
        assert!(!ask(&p, "late"), "not a consumer yet");
        p.consumers.push(Consumer {
            name: "late".into(),
            team: "a".into(),
            cert_sha256: Vec::new(),
            issuer_ca: None,
            issuer_certs: Vec::new(),
            subject: None,
            token_sha256: None,
            approle: None,
            jwt: None,
            kubernetes: None,
            ccp_app_ids: Vec::new(),
            admin: false,
            admin_teams: Vec::new(),
            vault_api_host: None,
            origin: crate::policy::Origin::File,
            identity_profile: None,
            renewed: crate::policy::Renewed::default(),
        });
        assert!(ask(&p, "late"));
    }
}
