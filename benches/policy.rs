//! The policy on the hot path: normalising a destination, matching `allowed_hosts`, the whole
//! decision for a consumer, and the token lookup every request makes.
//!
//! Run: `cargo bench --bench policy`. Results are recorded in docs/PERFORMANCE.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use keybroker::testing::policy::{Destination, HostPattern, Subject};
use keybroker::testing::reference::SecretPath;

fn bench(c: &mut Criterion) {
    c.bench_function("destination_parse_host", |b| {
        b.iter(|| Destination::parse(black_box("API.Partner.Example:443")).unwrap())
    });
    c.bench_function("destination_parse_url", |b| {
        b.iter(|| Destination::parse(black_box("https://api.partner.example/v1/pay")).unwrap())
    });
    let patterns: Vec<HostPattern> = [
        "api.partner.example",
        "*.sandbox.partner.example",
        "**.payments.example",
        "10.0.0.0/8",
        "api.other.example:8443",
    ]
    .iter()
    .map(|p| HostPattern::parse(p).unwrap())
    .collect();
    let dest = Destination::parse("a.b.payments.example").unwrap();
    c.bench_function("allowed_hosts_match_5_patterns", |b| {
        b.iter(|| {
            black_box(&patterns)
                .iter()
                .any(|p| p.matches(black_box(&dest)))
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("[[team]]\nslug = \"payments\"\n");
    // 100 consumers and 100 credentials: a mid-size policy.
    for i in 0..100 {
        text.push_str(&format!(
            "[[consumer]]\nname = \"c{i}\"\nteam = \"payments\"\ntoken_sha256 = \"{}\"\n\
             [[credential]]\nname = \"cred{i}\"\nmode = \"text\"\nteam = \"payments\"\n\
             allowed_hosts = [\"api{i}.partner.example\", \"*.payments.example\"]\n\
             value = \"$SECRET_p/c{i} $KEY_v\"\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("token-{i}")))
        ));
    }
    text.push_str("[[grant]]\nteam = \"payments\"\nsource = \"vault\"\npaths = [\"payments/**\"]\nallowed_hosts = [\"*.payments.example\"]\n");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let policy = keybroker::testing::policy::load(dir.path()).unwrap();
    let host = Destination::parse("gw.payments.example").unwrap();
    c.bench_function("decide_credential_100_consumers", |b| {
        b.iter(|| {
            policy.decide(
                black_box("c99"),
                Subject::Credential(black_box("cred99")),
                Some(&host),
            )
        })
    });
    let path = SecretPath::from_segments(["payments", "partner", "key"]).unwrap();
    c.bench_function("decide_reference_grant", |b| {
        b.iter(|| {
            policy.decide(
                black_box("c99"),
                Subject::Reference {
                    source: "vault",
                    path: black_box(&path),
                },
                Some(&host),
            )
        })
    });
    let snapshot = keybroker::testing::identity::Snapshot::new(policy);
    let identities = snapshot.identities();
    c.bench_function("consumer_by_token_100_consumers", |b| {
        b.iter(|| identities.by_token(black_box("token-99")))
    });
    large_policy(c);
}

/// A policy of a shared installation: 200 teams, 1,000 consumers, 2,000 credentials and 2,000
/// grants. The decision for the last of each must not walk the whole policy.
fn large_policy(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for t in 0..200 {
        text.push_str(&format!("[[team]]\nslug = \"t{t}\"\n"));
    }
    for i in 0..1000 {
        text.push_str(&format!(
            "[[consumer]]\nname = \"c{i}\"\nteam = \"t{}\"\ntoken_sha256 = \"{}\"\n",
            i % 200,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("token-{i}")))
        ));
    }
    for i in 0..2000 {
        let team = i % 200;
        text.push_str(&format!(
            "[[credential]]\nname = \"cred{i}\"\nmode = \"text\"\nteam = \"t{team}\"\n\
             allowed_hosts = [\"*.t{team}.example\"]\nvalue = \"$SECRET_t{team}/c{i} $KEY_v\"\n\
             [[grant]]\nteam = \"t{team}\"\nsource = \"vault\"\npaths = [\"t{team}/g{i}/*\"]\n\
             allowed_hosts = [\"*.t{team}.example\"]\n"
        ));
    }
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let policy = keybroker::testing::policy::load(dir.path()).unwrap();
    // c999 is in team t199, whose grants are the last ones of each round of 200.
    let host = Destination::parse("gw.t199.example").unwrap();
    let path = SecretPath::from_segments(["t199", "g1999", "key"]).unwrap();
    c.bench_function("decide_reference_1000_consumers_2000_grants", |b| {
        b.iter(|| {
            policy.decide(
                black_box("c999"),
                Subject::Reference {
                    source: "vault",
                    path: black_box(&path),
                },
                Some(&host),
            )
        })
    });
    c.bench_function("decide_credential_1000_consumers_2000_credentials", |b| {
        b.iter(|| {
            policy.decide(
                black_box("c999"),
                Subject::Credential(black_box("cred1999")),
                Some(&host),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
