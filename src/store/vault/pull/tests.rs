//! Model test of incremental pulls against a real OpenBao dev server (never a mock): two
//! replicas' stores over one prefix, random creates, rotations, patches and deletes on either,
//! pulls interleaved and skipped — a replica falling further behind than the generation's
//! history must notice and pull everything. At the end, after one pull each, both mirrors
//! equal what vault holds.

// The integration tests' OpenBao starter, shared as it is.
#[allow(unreachable_pub)]
#[path = "../../../../tests/support/openbao.rs"]
mod openbao;
#[allow(unreachable_pub)]
#[path = "../../../../tests/support/ports.rs"]
mod ports;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use secrecy::SecretString;

use crate::store::{EntryName, FileStore, Kind, Record, Store, StoreError, TeamSlug, VaultStore};

/// What a mirror (or vault) holds: per entry, its definition and record's version/revision.
type Holds = BTreeMap<(Kind, String, String), (String, u64, u64)>;

#[derive(Clone, Debug)]
enum Op {
    /// Create, rotate, patch or delete entry `name` of `kind` through replica `on`.
    Create {
        on: usize,
        kind: Kind,
        name: usize,
    },
    Rotate {
        on: usize,
        name: usize,
    },
    Patch {
        on: usize,
        kind: Kind,
        name: usize,
    },
    Delete {
        on: usize,
        kind: Kind,
        name: usize,
    },
    /// One poll of replica `on`.
    Pull {
        on: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let on = 0..2usize;
    let name = 0..3usize;
    let kind = prop_oneof![Just(Kind::Credential), Just(Kind::Consumer)];
    prop_oneof![
        3 => (on.clone(), kind.clone(), name.clone()).prop_map(|(on, kind, name)| Op::Create { on, kind, name }),
        2 => (on.clone(), name.clone()).prop_map(|(on, name)| Op::Rotate { on, name }),
        2 => (on.clone(), kind.clone(), name.clone()).prop_map(|(on, kind, name)| Op::Patch { on, kind, name }),
        1 => (on.clone(), kind, name).prop_map(|(on, kind, name)| Op::Delete { on, kind, name }),
        3 => on.prop_map(|on| Op::Pull { on }),
    ]
}

struct Replica {
    store: Store,
    _dir: tempfile::TempDir,
}

fn replica(bao: &openbao::OpenBao, prefix: &str) -> Replica {
    let cfg: crate::config::VaultSourceConfig =
        toml::from_str(&format!("name = \"vault\"\naddress = {:?}\n", bao.addr)).unwrap();
    let env = crate::source::VaultEnv {
        token: Some(SecretString::from(openbao::ROOT_TOKEN.to_owned())),
        ..Default::default()
    };
    let source = Arc::new(crate::source::VaultSource::new(&cfg, &env).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mirror = FileStore::open(dir.path()).unwrap();
    Replica {
        store: Store::vault(mirror, VaultStore::new(source, "vault", prefix)),
        _dir: dir,
    }
}

fn team() -> TeamSlug {
    TeamSlug::parse("payments").unwrap()
}

fn entry(name: usize) -> EntryName {
    EntryName::parse(&format!("e{name}")).unwrap()
}

/// One operation through a replica, as the manager makes it: from what its mirror holds (a
/// stale mirror loses the check-and-set, as a write through the API would).
async fn apply(replicas: &[Replica], op: &Op) {
    let value = SecretString::from("material".to_owned());
    let fields = [("value", &value)];
    let (on, kind, name) = match *op {
        Op::Pull { on } => {
            replicas[on].store.pull().await.unwrap();
            return;
        }
        Op::Create { on, kind, name }
        | Op::Patch { on, kind, name }
        | Op::Delete { on, kind, name } => (on, kind, name),
        Op::Rotate { on, name } => (on, Kind::Credential, name),
    };
    let store = &replicas[on].store;
    let (team, name) = (team(), entry(name));
    let previous = store.record(kind, &team, &name).unwrap();
    let toml = |r: &Record| format!("# {name} v{} r{}\n", r.version, r.revision);
    let written: Result<(), StoreError> = match (op, &previous) {
        (Op::Create { .. }, None) => {
            let record = Record::first(crate::store::now(), "operator".into(), 1);
            match kind {
                Kind::Credential => {
                    let w = crate::store::Write {
                        team: &team,
                        name: &name,
                        fields: &fields,
                        toml: &toml(&record),
                        record: &record,
                    };
                    store.write(w, None).await
                }
                Kind::Consumer | Kind::Identity => {
                    store
                        .commit(kind, &team, &name, &toml(&record), &record, None)
                        .await
                }
            }
        }
        (Op::Rotate { .. }, Some(prev)) => {
            let record = Record {
                version: prev.version + 1,
                revision: prev.revision + 1,
                ..prev.clone()
            };
            let w = crate::store::Write {
                team: &team,
                name: &name,
                fields: &fields,
                toml: &toml(&record),
                record: &record,
            };
            store.write(w, Some(prev)).await
        }
        (Op::Patch { .. }, Some(prev)) => {
            let record = Record {
                revision: prev.revision + 1,
                ..prev.clone()
            };
            store
                .commit(kind, &team, &name, &toml(&record), &record, Some(prev))
                .await
        }
        (Op::Delete { .. }, Some(prev)) => store.delete(kind, &team, &name, prev).await,
        // Nothing to rotate, patch or delete, or already there: the API's 404 or 409.
        _ => return,
    };
    match written {
        // A create racing a stale mirror fails its material's or definition's
        // check-and-set (the API's 409/412): nothing was committed.
        Ok(()) | Err(StoreError::Conflict) => {}
        Err(e) => panic!("{op:?}: {e}"),
    }
}

fn holds(mirror_dir: &Path) -> Holds {
    let mirror = FileStore::open(mirror_dir).unwrap();
    let mut out = Holds::new();
    for kind in Kind::ALL {
        for (team, name, record) in mirror.records(kind).unwrap() {
            let toml = mirror.definition(kind, &team, &name).unwrap().unwrap();
            out.insert(
                (kind, team.to_string(), name.to_string()),
                (toml, record.version, record.revision),
            );
        }
    }
    out
}

#[test]
fn two_replicas_pulling_what_changed_end_with_mirrors_equal_to_the_store() {
    let bao = openbao::OpenBao::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40), short in any::<bool>())| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("model{n}");
        let replicas = [replica(&bao, &prefix), replica(&bao, &prefix)];
        runtime.block_on(async {
            for r in &replicas {
                r.store.pull().await.unwrap();
            }
            if short {
                // A short history: a replica three writes behind pulls everything. (Each
                // replica's first bump asks for a long one: made before it is shortened.)
                let first = Record::first(crate::store::now(), "operator".into(), 1);
                for (i, r) in replicas.iter().enumerate() {
                    let seed = EntryName::parse(&format!("seed{i}")).unwrap();
                    r.store.commit(Kind::Consumer, &team(), &seed, "# seed\n", &first, None).await.unwrap();
                }
                bao.cli(&["kv", "metadata", "put", "-max-versions=3", &format!("secret/{prefix}/generation")]);
            }
            for op in &ops {
                apply(&replicas, op).await;
            }
            for r in &replicas {
                r.store.pull().await.unwrap();
            }
        });
        // What vault holds: a fresh replica's first pull reads everything.
        let truth = replica(&bao, &prefix);
        runtime.block_on(truth.store.pull()).unwrap();
        let want = holds(truth._dir.path());
        for r in &replicas {
            prop_assert_eq!(&holds(r._dir.path()), &want);
        }
    });
}

/// A write announced in the generation whose commit lands after the other replicas read its
/// entry (its writer died between the two, and the request already on its way landed): each
/// replica that read the entry early — by a pull of what changed, or by a full pull at its
/// start — reads it again at its next poll, though the generation did not move.
#[test]
fn an_announced_write_that_lands_late_reaches_every_replica() {
    let bao = openbao::OpenBao::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (a, b) = (replica(&bao, "late"), replica(&bao, "late"));
        a.store.pull().await.unwrap();
        b.store.pull().await.unwrap();
        let (team, name) = (team(), entry(0));
        let key = (Kind::Consumer, team.to_string(), name.to_string());
        let first = Record::first(crate::store::now(), "operator".into(), 1);
        a.store
            .commit(Kind::Consumer, &team, &name, "# v1\n", &first, None)
            .await
            .unwrap();
        b.store.pull().await.unwrap();
        assert_eq!(holds(b._dir.path())[&key].0, "# v1\n");

        // A announces its next write, then "dies": the commit lands later, with no bump.
        let writer = a.store.remote.as_ref().unwrap();
        writer
            .bump(Kind::Consumer, &team, &name, super::Expect::Version(2))
            .await
            .unwrap();
        b.store.pull().await.unwrap();
        let c = replica(&bao, "late");
        assert_eq!(c.store.pull().await.unwrap(), super::Pulled::Everything);
        assert_eq!(holds(b._dir.path())[&key].0, "# v1\n");
        assert_eq!(holds(c._dir.path())[&key].0, "# v1\n");
        let second = Record {
            revision: first.revision + 1,
            ..first.clone()
        };
        let body = serde_json::json!({
            "options": { "cas": 1 },
            "data": {
                "definition": "# v2\n",
                "record": serde_json::to_string(&second).unwrap(),
            },
        });
        writer
            .put(
                &writer.definition_path(Kind::Consumer, &team, &name),
                bytes::Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
        for r in [&b, &c] {
            let pulled = r.store.pull().await.unwrap();
            assert!(
                matches!(pulled, super::Pulled::Entries(_)),
                "{pulled:?} {:?}",
                r.store.remote.as_ref().unwrap().pending
            );
            assert_eq!(holds(r._dir.path())[&key].0, "# v2\n");
            // Landed: read no more.
            assert_eq!(r.store.pull().await.unwrap(), super::Pulled::Unchanged);
        }
    });
}

/// A write whose announcement fails (OpenBao refuses the generation's write) writes nothing:
/// were the definition committed first, every other replica would keep the old one.
#[test]
fn a_write_that_cannot_be_announced_writes_nothing() {
    let bao = openbao::OpenBao::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (a, b) = (replica(&bao, "mute"), replica(&bao, "mute"));
        a.store.pull().await.unwrap();
        b.store.pull().await.unwrap();
        let (team, name) = (team(), entry(0));
        let first = Record::first(crate::store::now(), "operator".into(), 1);
        a.store
            .commit(Kind::Consumer, &team, &name, "# v1\n", &first, None)
            .await
            .unwrap();
        b.store.pull().await.unwrap();
        // Every write of the generation now needs a check-and-set the store does not send.
        bao.cli(&[
            "kv",
            "metadata",
            "put",
            "-cas-required=true",
            "secret/mute/generation",
        ]);
        let second = Record {
            revision: first.revision + 1,
            ..first.clone()
        };
        let refused = a
            .store
            .commit(
                Kind::Consumer,
                &team,
                &name,
                "# v2\n",
                &second,
                Some(&first),
            )
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let truth = replica(&bao, "mute");
        truth.store.pull().await.unwrap();
        let key = (Kind::Consumer, team.to_string(), name.to_string());
        assert_eq!(
            holds(truth._dir.path())[&key].0,
            "# v1\n",
            "nothing written"
        );
        b.store.pull().await.unwrap();
        assert_eq!(holds(b._dir.path()), holds(truth._dir.path()));
        assert_eq!(holds(a._dir.path()), holds(truth._dir.path()));
    });
}
