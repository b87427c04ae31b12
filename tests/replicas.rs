//! Replicas sharing a vault store (docs/MANAGEMENT.md, docs/DEPLOY.md): two `keybroker serve`
//! processes, each with its own local mirror, over one real OpenBao. What one replica writes
//! the other serves within a few polls, wakes the other's blocking queries, and racing
//! writes on the two replicas cannot both win.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod raft;
    pub mod server;
}

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::fixture;
use support::openbao::OpenBao;
use support::pki::Ca;
use support::server::{Running, folder};

const ADMIN: &str = "replica-payments-admin";
const GW: &str = "replica-gw";

struct Replica {
    _dir: tempfile::TempDir,
    server: Running,
    /// The CA of its server certificate.
    ca_pem: String,
}

async fn replica(bao_addr: &str, prefix: &str) -> Replica {
    replica_with(&format!("{bao_addr:?}"), prefix, "").await
}

/// A replica whose vault source's `address` is `address` (TOML: a string or a list).
async fn replica_with(address: &str, prefix: &str, extra: &str) -> Replica {
    replica_in(folder("unused"), address, prefix, extra, "", "").await
}

/// A replica in `folder` (made by `support::server::folder`), with `server` added to its
/// `[server]` section.
async fn replica_in(
    (dir, ca): (tempfile::TempDir, Ca),
    address: &str,
    prefix: &str,
    extra: &str,
    server: &str,
    store: &str,
) -> Replica {
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .and("identity_domains = [\"payments.example\"]")
        .consumer("gw", "payments", GW)
        .team_admin("payments-admin", "payments", ADMIN, &["payments"])
        .write(root);
    fixture::Config::tls()
        .with(server)
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = {address}\n{extra}[store]\nkind = \"vault\"\nsource = \"vault\"\nprefix = \"{prefix}\"\npath = \"mirror\"\npoll = \"200ms\"\n{store}"
        ))
        .write(root);
    let server = Running::start(root, &ca.pem, 0, "info").await;
    Replica {
        _dir: dir,
        server,
        ca_pem: ca.pem,
    }
}

impl Replica {
    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, Option<String>) {
        let mut r = self
            .server
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            etag,
        )
    }

    /// `POST /v1/credentials` as the admin: credential `name` with a client certificate `cn`
    /// of `partner`.
    async fn create(&self, name: &str, partner: &Ca, cn: &str) -> (u16, Value, Option<String>) {
        self.send(
            reqwest::Method::POST,
            ADMIN,
            "/v1/credentials",
            Some(body(name, partner, cn)),
            &[],
        )
        .await
    }

    async fn material(
        &self,
        name: &str,
        headers: &[(&str, &str)],
        wait: &str,
    ) -> (u16, Value, Option<String>) {
        self.send(
            reqwest::Method::POST,
            GW,
            &format!("/v1/credentials/{name}/material{wait}"),
            Some(json!({ "host": "api.partner.example" })),
            headers,
        )
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn mirror_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self._dir.path().join("mirror")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    }
}

fn body(name: &str, partner: &Ca, cn: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let client = partner.client(dir.path(), "c", cn);
    json!({
        "name": name,
        "team": "payments",
        "mode": "mtls",
        "client_certificate": client.cert_pem,
        "client_private_key": client.key_pem,
        "root_certificate": partner.pem,
        "allowed_hosts": ["api.partner.example"],
    })
}

/// The credential `partner` (client certificate `gateway-v1` of `partner`) created through
/// `a`, once `b`'s poll has pulled it and `b` serves it.
async fn create_on_a_served_by_b(a: &Replica, b: &Replica, partner: &Ca) {
    let (status, v, _) = a.create("partner", partner, "gateway-v1").await;
    assert_eq!(status, 201, "{v}");
    until("B serves what A created", || async {
        b.material("partner", &[], "").await.0 == 200
    })
    .await;
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_store_is_shared_by_replicas_and_racing_writes_cannot_both_win() {
    let bao = OpenBao::start();
    let (a, b) = (
        replica(&bao.addr, "kb-test").await,
        replica(&bao.addr, "kb-test").await,
    );
    let partner = Ca::new("partner CA");

    // Created through A, served by B once B's poll pulled it.
    create_on_a_served_by_b(&a, &b, &partner).await;
    let (_, m, b_etag) = b.material("partner", &[], "").await;
    assert!(
        m["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // The material is in OpenBao, not in either mirror.
    for r in [&a, &b] {
        let files = r.mirror_files();
        assert!(
            files.iter().all(|f| !f.contains("/material/")),
            "material in a mirror: {files:?}"
        );
    }
    let stored = bao.cli(&[
        "kv",
        "get",
        "-format=json",
        "secret/kb-test/material/payments/partner/v1",
    ]);
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");

    // A blocking query on B is woken by a rotation written through A.
    let b_etag = b_etag.unwrap();
    let waiting = {
        let b_url = b.server.url("/v1/credentials/partner/material?wait=60s");
        let client = b.server.client.clone();
        let etag = b_etag.clone();
        tokio::spawn(async move {
            let resp = client
                .post(b_url)
                .bearer_auth(GW)
                .header("if-none-match", etag)
                .timeout(Duration::from_secs(90))
                .json(&json!({ "host": "api.partner.example" }))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    let (_, _, a_etag) = a
        .send(
            reqwest::Method::GET,
            ADMIN,
            "/v1/teams/payments/credentials/partner",
            None,
            &[],
        )
        .await;
    let a_etag = a_etag.unwrap();
    let (status, v, _) = a
        .send(
            reqwest::Method::PUT,
            ADMIN,
            "/v1/credentials/partner",
            Some(body("partner", &partner, "gateway-v2")),
            &[("if-match", &a_etag)],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    until("B serves the rotation", || async {
        b.material("partner", &[], "").await.1["certificate"] != m["certificate"]
    })
    .await;
    let fresh = b
        .material("partner", &[("if-none-match", &b_etag)], "?wait=5s")
        .await;
    assert_eq!(
        fresh.0, 200,
        "a fresh wait with the old ETag: {:?}",
        fresh.1
    );
    let (status, woken) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap_or_else(|_| panic!("the waiter on B was not woken:\n{}", b.log()))
        .unwrap();
    assert_eq!(status, 200, "{woken}");
    assert_ne!(
        woken["certificate"], m["certificate"],
        "the new certificate"
    );

    // A stale ETag (A's, from before the rotation) is refused on B too: 412, nothing written.
    let (status, v, _) = b
        .send(
            reqwest::Method::PUT,
            ADMIN,
            "/v1/credentials/partner",
            Some(body("partner", &partner, "gateway-v3")),
            &[("if-match", &a_etag)],
        )
        .await;
    assert_eq!(status, 412, "{v}");

    // A PATCH is a write like any other: once both replicas show the same ETag, a PATCH
    // through A makes B's PATCH with that ETag lose (B's mirror may not have pulled A's
    // yet: the store's check-and-set compares the record's revision, not only its version).
    let current = etag_of(&a).await;
    until("B shows A's ETag", || async {
        etag_of(&b).await == current
    })
    .await;
    let patch = |hosts: &[&str]| Some(json!({ "allowed_hosts": hosts }));
    let (status, v, _) = a
        .send(
            reqwest::Method::PATCH,
            ADMIN,
            "/v1/credentials/partner",
            patch(&["api.partner.example", "a.partner.example"]),
            &[("if-match", &current)],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v, _) = b
        .send(
            reqwest::Method::PATCH,
            ADMIN,
            "/v1/credentials/partner",
            patch(&["api.partner.example", "b.partner.example"]),
            &[("if-match", &current)],
        )
        .await;
    assert_eq!(status, 412, "B's PATCH overwrote A's: {v}");
    until("B shows A's PATCH", || async {
        b.send(
            reqwest::Method::GET,
            ADMIN,
            "/v1/teams/payments/credentials/partner",
            None,
            &[],
        )
        .await
        .1["allowed_hosts"]
            == json!(["api.partner.example", "a.partner.example"])
    })
    .await;

    // The same name created on both at once: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.create("race", &partner, "r1"),
        b.create("race", &partner, "r2"),
    );
    let mut codes = [ra.0, rb.0];
    codes.sort_unstable();
    assert_eq!(codes, [201, 409], "{:?} {:?}", ra.1, rb.1);

    // Deleted through B: A stops serving it.
    until("B has the rotation", || async {
        b.send(
            reqwest::Method::GET,
            ADMIN,
            "/v1/teams/payments/credentials/partner",
            None,
            &[],
        )
        .await
        .1["version"]
            == 2
    })
    .await;
    let (status, v, _) = b
        .send(
            reqwest::Method::DELETE,
            ADMIN,
            "/v1/credentials/partner",
            None,
            &[],
        )
        .await;
    assert!(status == 204 || status == 200, "{status} {v}");
    let never = a.material("never-existed", &[], "").await.0;
    assert_ne!(never, 200);
    until("A no longer serves what B deleted", || async {
        a.material("partner", &[], "").await.0 == never
    })
    .await;
    let left = bao.cli(&["kv", "list", "secret/kb-test/material/payments/"]);
    assert!(!left.contains("partner"), "{left}");
}

/// THE replica promise: two keybrokers in front of a real 3-node OpenBao Raft cluster
/// (`address` lists every node). The leader is killed under a steady load of reads on both
/// replicas with a 1 s cache TTL (so reads keep reaching OpenBao): no read fails, a rotation
/// written through A after the election reaches B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_a_raft_cluster_fail_no_read_when_the_leader_dies() {
    let mut cluster = support::raft::Cluster::start();
    let list = format!("{:?}", cluster.addresses());
    let ttl = "[cache]\nttl = \"1s\"\n";
    let (a, b) = (
        replica_with(&list, "kb-raft", ttl).await,
        replica_with(&list, "kb-raft", ttl).await,
    );
    let partner = Ca::new("partner CA");
    create_on_a_served_by_b(&a, &b, &partner).await;

    let before = b.material("partner", &[], "").await.1["certificate"].clone();
    // Both replicas have served it before the kill: what a replica never read it cannot serve
    // stale while no node answers (the promise is for reads in use, within `max_stale`).
    assert_eq!(a.material("partner", &[], "").await.0, 200);
    // A steady load on both replicas, every answer counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loads = Vec::new();
    for r in [&a, &b] {
        let (client, url) = (
            r.server.client.clone(),
            r.server.url("/v1/credentials/partner/material"),
        );
        let stop = std::sync::Arc::clone(&stop);
        loads.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = client
                    .post(&url)
                    .bearer_auth(GW)
                    .json(&json!({ "host": "api.partner.example" }))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }));
    }
    let leader = cluster.leader().expect("a leader before the kill");
    cluster.kill(leader);
    // A new leader among the two left.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.leader().is_none() {
        if Instant::now() > deadline {
            std::fs::write("/tmp/raft.log", cluster.logs()).unwrap();
            panic!("no new leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A rotation through A once the store can be written again (a management write during
    // the election may be refused 503: writes are not promised through it, reads are).
    let mut rotated = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rotated {
        let (_, _, etag) = a
            .send(
                reqwest::Method::GET,
                ADMIN,
                "/v1/teams/payments/credentials/partner",
                None,
                &[],
            )
            .await;
        let (status, _, _) = a
            .send(
                reqwest::Method::PUT,
                ADMIN,
                "/v1/credentials/partner",
                Some(body("partner", &partner, "gateway-v2")),
                &[("if-match", etag.as_deref().unwrap_or(""))],
            )
            .await;
        rotated = status == 200;
        assert!(
            Instant::now() < deadline,
            "no rotation after the election:\n{}",
            a.log()
        );
        if !rotated {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    until(
        "B serves the rotation written after the election",
        || async {
            let now = b.material("partner", &[], "").await;
            now.0 == 200 && now.1["certificate"] != before
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for load in loads {
        let (ok, failed) = load.await.unwrap();
        assert!(ok > 10, "too few reads to mean anything: {ok}");
        assert!(
            failed.is_empty(),
            "reads failed through the leader's death: {failed:?}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
    }
}

/// A replica with the Vault-compatible API over TLS, `auth/cert/login` for consumers of
/// `clients`, and the token key at `key`.
async fn vault_api_replica(
    clients: &Ca,
    key: &std::path::Path,
) -> (tempfile::TempDir, Ca, Running) {
    let (dir, ca) = folder("replicated-value");
    let root = dir.path();
    clients.write(&root.join("clients-ca.pem"));
    fixture::Policy::new()
        .team("payments")
        .and(&format!(
            "[[consumer]]\nname = \"workers\"\nteam = \"payments\"\nissuer_ca = {:?}\nsubject = \"CN=worker-*\"\nvault_api_host = \"api.partner.example\"",
            root.join("clients-ca.pem")
        ))
        .grant("payments", "files", &["**"], &["api.partner.example"])
        .write(root);
    fixture::Config::tls()
        .files("files", "secrets")
        .with(&format!(
            "[vault_api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"clients-ca.pem\"\ntoken_key_file = {:?}\n",
            key
        ))
        .write(root);
    let running = Running::start(root, &ca.pem, 0, "info").await;
    (dir, ca, running)
}

/// A token the Vault-compatible API issued on one replica is accepted by another holding the
/// same `token_key_file` (a client's next request may land anywhere behind the load
/// balancer), and refused by a replica with another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_api_token_issued_by_one_replica_is_accepted_by_another_sharing_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let (shared, other) = (
        keys.path().join("shared.key"),
        keys.path().join("other.key"),
    );
    std::fs::write(&shared, "s".repeat(48)).unwrap();
    std::fs::write(&other, "o".repeat(48)).unwrap();
    let clients = Ca::new("replica clients CA");
    let (_da, ca_a, a) = vault_api_replica(&clients, &shared).await;
    let (_db, ca_b, b) = vault_api_replica(&clients, &shared).await;
    let (_dc, ca_c, c) = vault_api_replica(&clients, &other).await;
    let worker_dir = tempfile::tempdir().unwrap();
    let worker = clients.client(worker_dir.path(), "worker", "worker-1");
    let client = |ca: &Ca| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(&worker.identity_pem()).unwrap())
            .resolve("localhost", ([127, 0, 0, 1], 0).into())
            .build()
            .unwrap()
    };
    let login: Value = client(&ca_a)
        .post(format!(
            "https://localhost:{}/v1/auth/cert/login",
            a.port_of("vault_api")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
    let read = |ca: &Ca, r: &Running| {
        let (client, url, token) = (
            client(ca),
            format!(
                "https://localhost:{}/v1/files/data/app/token",
                r.port_of("vault_api")
            ),
            token.clone(),
        );
        async move {
            let resp = client
                .get(url)
                .header("X-Vault-Token", token)
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, v) = read(&ca_b, &b).await;
    assert_eq!(status, 200, "B accepts A's token: {v}");
    assert_eq!(v["data"]["data"]["value"], "replicated-value");
    let (status, _) = read(&ca_c, &c).await;
    assert_eq!(status, 403, "a replica with another key refuses it");
}

/// Consumers are shared like credentials: one made through A authenticates at B once B
/// pulled it, and a certificate revoked through A stops identifying it at B within B's poll.
/// OpenBao holds the token's digest, never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_on_one_replica_works_on_the_other_and_a_revocation_reaches_both() {
    let bao = OpenBao::start();
    let clients = Ca::new("clients CA");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let made = folder("unused");
        clients.write(&made.0.path().join("clients-ca.pem"));
        let address = format!("{:?}", bao.addr);
        let server = "client_ca = \"clients-ca.pem\"\nclient_auth = \"optional\"";
        replicas.push(replica_in(made, &address, "kb-consumers", "", server, "").await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let (status, made, _) = a
        .send(
            reqwest::Method::POST,
            ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "gw2" })),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    until("B accepts the token A made", || async {
        b.send(reqwest::Method::GET, &token, "/v1/credentials", None, &[])
            .await
            .0
            == 200
    })
    .await;
    let stored = bao.cli(&[
        "kv",
        "get",
        "-format=json",
        "secret/kb-consumers/consumers/payments/gw2",
    ]);
    assert!(!stored.contains(&token), "the token is in OpenBao");
    assert!(
        stored.contains(&support::server::token_sha256(&token)),
        "{stored}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cert = clients.client(dir.path(), "gw2", "gw2.payments.example");
    let (status, added, _) = a
        .send(
            reqwest::Method::POST,
            ADMIN,
            "/v1/teams/payments/consumers/gw2/certificates",
            Some(json!({ "certificate": cert.cert_pem })),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let with_cert = |r| with_certificate(r, &cert);
    until("B accepts the certificate added through A", || async {
        with_cert(b).await == 200
    })
    .await;
    let fingerprint = added["fingerprint"].as_str().unwrap();
    let (status, revoked, _) = a
        .send(
            reqwest::Method::DELETE,
            ADMIN,
            &format!("/v1/teams/payments/consumers/gw2/certificates/{fingerprint}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(with_cert(a).await, 401, "A still accepts what it revoked");
    until("B refuses the certificate A revoked", || async {
        with_cert(b).await == 401
    })
    .await;

    // An Apinizer-style issuer ACL set through B identifies, at A, a certificate of that
    // issuer whose subject matches — and only such a one.
    let (status, v, _) = b
        .send(
            reqwest::Method::PUT,
            ADMIN,
            "/v1/teams/payments/consumers/gw2/issuer-acl",
            Some(json!({
                "issuer_ca": clients.pem,
                "subject": "CN=worker-*.payments.example",
                "validateCertificate": true,
                "validateACLForIssuer": true,
            })),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let worker = clients.client(dir.path(), "worker", "worker-7.payments.example");
    let stranger = clients.client(dir.path(), "stranger", "worker-7.fraud.example");
    until(
        "A accepts a certificate the ACL set through B matches",
        || async { with_certificate(a, &worker).await == 200 },
    )
    .await;
    assert_eq!(with_certificate(a, &stranger).await, 401);
}

/// The ETag `r` shows for the credential `partner`.
async fn etag_of(r: &Replica) -> String {
    r.send(
        reqwest::Method::GET,
        ADMIN,
        "/v1/teams/payments/credentials/partner",
        None,
        &[],
    )
    .await
    .2
    .unwrap()
}

/// `[store] auth`: the store reads and writes its records with its own login, so the token
/// consumers' reads go through cannot write the store. The control: the same replica without
/// it cannot write at all (its source's token may only read material).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_store_writes_with_its_own_login_and_the_read_token_cannot() {
    let bao = OpenBao::start();
    let policies = tempfile::tempdir().unwrap();
    for (name, hcl) in [
        (
            "kb-reader",
            "path \"secret/data/kb-own/material/*\" { capabilities = [\"read\"] }\n",
        ),
        (
            "kb-store",
            "path \"secret/data/kb-own/*\" { capabilities = [\"create\", \"update\", \"read\", \"delete\"] }\npath \"secret/metadata/kb-own/*\" { capabilities = [\"read\", \"list\", \"delete\"] }\n",
        ),
    ] {
        let file = policies.path().join(format!("{name}.hcl"));
        std::fs::write(&file, hcl).unwrap();
        bao.cli(&["policy", "write", name, file.to_str().unwrap()]);
    }
    let reader = bao.token("kb-reader", "1h");
    let writer = bao.token("kb-store", "1h");
    let start = |own_login: bool| {
        let made = folder("unused");
        std::fs::write(made.0.path().join("reader-token"), &reader).unwrap();
        std::fs::write(made.0.path().join("store-token"), &writer).unwrap();
        let address = format!("{:?}", bao.addr);
        let source = "auth = { method = \"token\", token_file = \"reader-token\" }\n";
        let store = if own_login {
            "auth = { method = \"token\", token_file = \"store-token\" }\n"
        } else {
            ""
        };
        async move { replica_in(made, &address, "kb-own", source, "", store).await }
    };
    let partner = Ca::new("partner CA");

    let without = start(false).await;
    let (status, v, _) = without.create("partner", &partner, "gateway-v1").await;
    assert_eq!(status, 503, "the read token wrote the store: {v}");
    drop(without);

    let with = start(true).await;
    let (status, v, _) = with.create("partner", &partner, "gateway-v1").await;
    assert_eq!(status, 201, "{v}");
    // Consumers' reads go through the read token, which may read the material.
    let (status, m, _) = with.material("partner", &[], "").await;
    assert_eq!(status, 200, "{m}");
    // That token cannot change the store.
    let out = std::process::Command::new("bao")
        .args(["kv", "put", "secret/kb-own/generation", "at=now"])
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the read token can write the store");

    // A refused write writes nothing to OpenBao: a mismatched pair is 422 and neither its
    // material nor a new generation is there (read from OpenBao's own metadata).
    let generation = || {
        let meta = bao.cli(&[
            "kv",
            "metadata",
            "get",
            "-format=json",
            "secret/kb-own/generation",
        ]);
        serde_json::from_str::<Value>(&meta).unwrap()["data"]["current_version"].clone()
    };
    let before = generation();
    let dir = tempfile::tempdir().unwrap();
    let (one, other) = (
        partner.client(dir.path(), "one", "one"),
        partner.client(dir.path(), "other", "other"),
    );
    let (status, v, _) = with
        .send(
            reqwest::Method::POST,
            ADMIN,
            "/v1/credentials",
            Some(json!({
                "name": "mismatched", "team": "payments", "mode": "mtls",
                "client_certificate": one.cert_pem, "client_private_key": other.key_pem,
            })),
            &[],
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "credential_rejected", "{v}");
    assert_eq!(
        generation(),
        before,
        "a refused write bumped the generation"
    );
    let listed = bao.cli(&["kv", "list", "secret/kb-own/material/payments"]);
    assert!(!listed.contains("mismatched"), "{listed}");
}

/// Material no definition references — a rotation or a create that crashed (or lost a race)
/// between its two writes — is collected from OpenBao once `orphan_grace` old; the current
/// version stays and the credential is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_material_is_collected_from_the_vault_store() {
    let bao = OpenBao::start();
    let address = format!("{:?}", bao.addr);
    let r = replica_in(
        folder("unused"),
        &address,
        "kb-orphans",
        "",
        "",
        "orphan_grace = \"1s\"\n",
    )
    .await;
    let partner = Ca::new("partner CA");
    let (status, v, _) = r.create("partner", &partner, "gateway-v1").await;
    assert_eq!(status, 201, "{v}");
    // What a crash between the two writes leaves: a version past the definition's, and
    // material of a credential that was never committed.
    for path in [
        "secret/kb-orphans/material/payments/partner/v7",
        "secret/kb-orphans/material/payments/ghost/v1",
    ] {
        bao.cli(&["kv", "put", path, "value=left-behind"]);
    }
    let listed = |p: &str| {
        let out = std::process::Command::new("bao")
            .args(["kv", "list", "-format=json", p])
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", support::openbao::ROOT_TOKEN)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    until("the orphans are collected", || async {
        let partner_versions = listed("secret/kb-orphans/material/payments/partner");
        let teams = listed("secret/kb-orphans/material/payments");
        !partner_versions.contains("v7") && !teams.contains("ghost")
    })
    .await;
    assert!(
        listed("secret/kb-orphans/material/payments/partner").contains("v1"),
        "the referenced version was collected"
    );
    assert_eq!(r.material("partner", &[], "").await.0, 200);
}

/// The status `r` answers a request authenticated by the client certificate `id`.
async fn with_certificate(r: &Replica, id: &support::pki::Issued) -> u16 {
    r.server
        .status_with_identity(&r.ca_pem, &id.identity_pem(), "/v1/credentials")
        .await
}

/// A replica that cannot pull its store says so: `/readyz` shows how long ago its last pull
/// succeeded, and once that is older than `[store] stale_after` it is 503 with `store.stale`
/// — it may no longer know of a deletion or a revocation made on another replica, and a load
/// balancer takes it out. Polled with a deadline; the bound is 2 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_pull_its_store_is_not_ready() {
    let mut bao = OpenBao::start();
    let r = replica_in(
        folder("unused"),
        &format!("{:?}", bao.addr),
        "stale",
        "",
        "",
        "stale_after = \"2s\"\n",
    )
    .await;
    let readyz = || async {
        let resp = r
            .server
            .client
            .get(r.server.url("/readyz"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };
    until("the store pulls and the replica is ready", || async {
        let (status, body) = readyz().await;
        status == 200 && body["store"]["stale"] == false
    })
    .await;
    bao.stop();
    until("the replica says its store view is stale", || async {
        let (status, body) = readyz().await;
        status == 503 && body["store"]["stale"] == true
    })
    .await;
}

/// A write the writing replica's policy refuses is put back (issue 48: under the reload that
/// parses only changed files, and the pull that reads only changed entries): the operator's
/// file on A is broken mid-edit, so A's reload fails and its rotation is put back — in vault
/// too; B, pulling the write and the put-back as two changes, ends with what A has and
/// serves the first certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_policy_refuses_is_put_back_and_the_other_replica_pulls_it_back() {
    let bao = OpenBao::start();
    let (a, b) = (
        replica(&bao.addr, "put-back").await,
        replica(&bao.addr, "put-back").await,
    );
    let partner = Ca::new("partner CA");
    create_on_a_served_by_b(&a, &b, &partner).await;
    let (_, first, _) = b.material("partner", &[], "").await;
    let (_, _, etag) = a
        .send(
            reqwest::Method::GET,
            ADMIN,
            "/v1/teams/payments/credentials/partner",
            None,
            &[],
        )
        .await;

    // The operator's file on A, mid-edit: A's next reload fails.
    let file = a._dir.path().join("policies/p.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}\n[[team]\n")).unwrap();
    let (status, v, _) = a
        .send(
            reqwest::Method::PUT,
            ADMIN,
            "/v1/credentials/partner",
            Some(body("partner", &partner, "gateway-v2")),
            &[("if-match", etag.as_deref().unwrap())],
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "policy_unavailable", "{v}");

    // A witness written after the put-back: once B serves it, B has pulled both changes.
    std::fs::write(&file, good).unwrap();
    let (status, v, _) = a.create("witness", &partner, "gateway-w").await;
    assert_eq!(status, 201, "{v}");
    until("B serves the witness", || async {
        b.material("witness", &[], "").await.0 == 200
    })
    .await;
    let definition = |r: &Replica| {
        std::fs::read_to_string(
            r._dir
                .path()
                .join("mirror/credentials/payments/partner.toml"),
        )
        .unwrap()
    };
    assert_eq!(definition(&b), definition(&a), "B's mirror is A's");
    assert!(definition(&b).contains("/v1 "), "{}", definition(&b));
    let (status, now, _) = b.material("partner", &[], "").await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(
        now["certificate"], first["certificate"],
        "the first certificate"
    );
}
