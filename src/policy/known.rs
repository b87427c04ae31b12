//! What the policy is checked against: the sources a grant or a credential may name, and
//! which of them issue or sign. One function reads it off the configuration, for `serve` and
//! for `keybroker policy check` alike.

use super::KnownSources;
use crate::config::{Config, PkiIssue, STORE_SOURCE, SourceConfig, SourceKind, StoreKind};

impl KnownSources {
    /// The configured sources (with a file store's own `store` source, which `serve` adds).
    pub fn of(config: &Config) -> Self {
        // A file store's material is served by its own file source, `store`, which `serve` adds.
        let file_store = config
            .store
            .as_ref()
            .is_some_and(|st| st.kind == StoreKind::File)
            .then(|| STORE_SOURCE.to_owned());
        Self {
            names: config
                .sources
                .iter()
                .map(|s| s.name().to_owned())
                .chain(file_store)
                .collect(),
            default: config.default_source().map(str::to_owned),
            ccp: config.ccp_source().map(str::to_owned),
            store: config.store.as_ref().map(|st| match (st.kind, &st.source) {
                (StoreKind::Vault, Some(source)) => {
                    (source.clone(), st.prefix.trim_matches('/').to_owned())
                }
                _ => (STORE_SOURCE.to_owned(), String::new()),
            }),
            issuing: config
                .sources
                .iter()
                .filter(|s| s.kind() == SourceKind::Pki)
                .map(|s| s.name().to_owned())
                .collect(),
            signing: pki_sources(config)
                .flat_map(|p| {
                    p.profiles
                        .iter()
                        .filter(|(_, profile)| profile.issue == PkiIssue::Sign)
                        .map(|(name, _)| (p.name.clone(), name.clone()))
                })
                .collect(),
            pki_names: pki_sources(config)
                .flat_map(|p| {
                    p.profiles.iter().map(|(name, profile)| {
                        let names = std::iter::once(profile.common_name.clone())
                            .chain(profile.alt_names.iter().cloned())
                            .collect();
                        ((p.name.clone(), name.clone()), names)
                    })
                })
                .collect(),
        }
    }
}

fn pki_sources(config: &Config) -> impl Iterator<Item = &crate::config::PkiSourceConfig> {
    config.sources.iter().filter_map(|s| match s {
        SourceConfig::Pki(p) => Some(p),
        _ => None,
    })
}
