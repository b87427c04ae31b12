//! The management plane against the file store (docs/MANAGEMENT.md): a Tines user's
//! create-credential request as sent, ingest verification that writes nothing when it
//! refuses, team-scoped admins, If-Match on a rotation, delete, and the audit trail — and
//! never material in a management answer.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use serde_json::{Value, json};

use support::fixture;
use support::pki::Ca;
use support::server::{Running, folder};

const GW: &str = "manage-gw-token";
const PAYMENTS_ADMIN: &str = "manage-payments-admin";
const FRAUD_ADMIN: &str = "manage-fraud-admin";

struct World {
    dir: tempfile::TempDir,
    server: Running,
    partner: Ca,
}

async fn world() -> World {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .tines_team("payments", 2)
        .team("fraud")
        .consumer("gw", "payments", GW)
        .team_admin("payments-admin", "payments", PAYMENTS_ADMIN, &["payments"])
        .team_admin("fraud-admin", "fraud", FRAUD_ADMIN, &["fraud"])
        .write(root);
    fixture::Config::tls()
        .with("[store]\nkind = \"file\"\npath = \"store\"")
        .audit()
        .write(root);
    let server = Running::start(root, &ca.pem, 0, "info").await;
    World {
        dir,
        server,
        partner: Ca::new("partner CA"),
    }
}

impl World {
    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut r = self
            .server
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("PRIVATE KEY") || path.ends_with("/material"),
            "a management answer holds material: {text}"
        );
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            etag,
        )
    }

    async fn material(&self, name: &str) -> (u16, Value) {
        let (s, v, _) = self
            .send(
                reqwest::Method::POST,
                GW,
                &format!("/v1/credentials/{name}/material"),
                Some(json!({ "host": "api.partner.example" })),
                None,
            )
            .await;
        (s, v)
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    fn stored(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["credentials", "material", "records"] {
            let base = self.dir.path().join("store").join(sub);
            for team in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(team.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    out.push(format!(
                        "{sub}/{}/{}",
                        team.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out
    }
}

/// CyberArk CCP's flattening: every newline a space.
fn flattened(pem: &str) -> String {
    pem.trim_end().replace('\n', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tines_create_request_as_sent_makes_a_served_credential() {
    let w = world().await;
    let client = w.partner.client(w.dir.path(), "client", "gw-client");
    // The seed's sample request, with the PEM as CCP hands it back.
    let (status, v, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials",
            Some(json!({
                "name": "mtls credential",
                "mode": "MTLS",
                "team_id": 2,
                "mtls_client_certificate": flattened(&client.cert_pem),
                "mtls_client_private_key": flattened(&client.key_pem),
                "mtls_root_certificate": flattened(&w.partner.pem),
                "allowed_hosts": ["api.partner.example"],
            })),
            None,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for field in [
        "id",
        "name",
        "mode",
        "team_id",
        "folder_id",
        "read_access",
        "shared_team_slugs",
        "slug",
        "created_at",
        "updated_at",
        "description",
        "allowed_hosts",
        "metadata",
    ] {
        assert!(v.get(field).is_some(), "Tines' field {field} missing: {v}");
    }
    assert_eq!(
        (
            &v["name"],
            &v["slug"],
            &v["mode"],
            &v["team_id"],
            &v["read_access"]
        ),
        (
            &json!("mtls credential"),
            &json!("mtls_credential"),
            &json!("MTLS"),
            &json!(2),
            &json!("TEAM")
        )
    );
    // Served at the main API, repaired byte for byte.
    let (status, m) = w.material("mtls_credential").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["certificate"], client.cert_pem.as_str());
    assert_eq!(m["private_key"], client.key_pem.as_str());
    // Listed and shown in Tines' shape; deleted by its id.
    let id = v["id"].as_u64().unwrap();
    let (status, list, _) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["user_credentials"][0]["id"], id);
    // Paged as Tines pages, with its `meta`.
    assert_eq!(list["meta"]["count"], 1, "{list}");
    assert_eq!(list["meta"]["per_page"], 20);
    assert_eq!(list["meta"]["pages"], 1);
    assert_eq!(list["meta"]["next_page"], serde_json::Value::Null);
    let (status, empty, _) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials?page=2&per_page=1",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(empty["user_credentials"], json!([]), "{empty}");
    assert_eq!(
        empty["meta"]["previous_page"],
        "/api/v1/user_credentials?page=1&per_page=1"
    );
    let (status, _, _) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials?page=x",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = w
        .send(
            reqwest::Method::DELETE,
            PAYMENTS_ADMIN,
            &format!("/api/v1/user_credentials/{id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        w.material("mtls_credential").await.0,
        403,
        "no door serves it"
    );
    assert!(w.stored().is_empty(), "{:?}", w.stored());
    let audit = w.audit();
    assert!(audit.contains("\"credential.create\""), "{audit}");
    assert!(audit.contains("\"credential.delete\""), "{audit}");
    assert!(
        !audit.contains("PRIVATE KEY") && !audit.contains("BEGIN"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refusals_write_nothing_and_admins_are_scoped_to_their_teams() {
    let w = world().await;
    let a = w.partner.client(w.dir.path(), "a", "a-client");
    let b = w.partner.client(w.dir.path(), "b", "b-client");
    let body = |cert: &str, key: &str, access: &str| {
        json!({
            "name": "partner-api", "team": "payments", "mode": "mtls",
            "client_certificate": cert, "client_private_key": key,
            "root_certificate": w.partner.pem, "read_access": access,
            "allowed_hosts": ["api.partner.example"],
        })
    };
    let post = |token: &'static str, body: Value| {
        w.send(
            reqwest::Method::POST,
            token,
            "/v1/credentials",
            Some(body),
            None,
        )
    };
    // Another pair's key: 422 with role and code, nothing stored.
    let (status, v, _) = post(PAYMENTS_ADMIN, body(&a.cert_pem, &b.key_pem, "TEAM")).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "credential_rejected");
    assert_eq!(
        v["error"]["details"][0]["reason"],
        "key_certificate_mismatch"
    );
    // Not PEM at all: 422 pem_rejected, no input echoed.
    let (status, v, _) = post(
        PAYMENTS_ADMIN,
        body("not a certificate", &a.key_pem, "TEAM"),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "pem_rejected");
    assert!(!v.to_string().contains("not a certificate"));
    assert!(w.stored().is_empty(), "{:?}", w.stored());
    // Scoping: another team's admin, a plain consumer, GLOBAL by a team admin.
    assert_eq!(
        post(FRAUD_ADMIN, body(&a.cert_pem, &a.key_pem, "TEAM"))
            .await
            .0,
        403
    );
    assert_eq!(post(GW, body(&a.cert_pem, &a.key_pem, "TEAM")).await.0, 403);
    assert_eq!(
        post(PAYMENTS_ADMIN, body(&a.cert_pem, &a.key_pem, "GLOBAL"))
            .await
            .0,
        403
    );
    // Huge input: a 70 KiB value is refused before any PEM work, nothing stored.
    let huge = "A".repeat(70 << 10);
    let (status, v, _) = post(PAYMENTS_ADMIN, body(&huge, &a.key_pem, "TEAM")).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid")),
        "{v}"
    );
    // The door's rule holds here too: two Authorization headers count for no one (400).
    let twice = w
        .server
        .client
        .post(w.server.url("/v1/credentials"))
        .header("authorization", format!("Bearer {PAYMENTS_ADMIN}"))
        .header("authorization", format!("Bearer {GW}"))
        .json(&body(&a.cert_pem, &a.key_pem, "TEAM"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    assert!(w.stored().is_empty(), "{:?}", w.stored());
    let audit = w.audit();
    assert!(audit.contains("\"not_allowed\""), "{audit}");

    // Created; a second create of the name is 409.
    let (status, created, etag) = post(PAYMENTS_ADMIN, body(&a.cert_pem, &a.key_pem, "TEAM")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    assert_eq!(created["version"], 1);
    let etag = etag.expect("an ETag");
    assert_eq!(
        post(PAYMENTS_ADMIN, body(&a.cert_pem, &a.key_pem, "TEAM"))
            .await
            .0,
        409
    );

    // A rotation: If-Match required (428), a stale one refused (412), the current one used.
    let put = async |m: Option<&str>, cert: &str, key: &str| {
        w.send(
            reqwest::Method::PUT,
            PAYMENTS_ADMIN,
            "/v1/credentials/partner-api",
            Some(body(cert, key, "TEAM")),
            m,
        )
        .await
    };
    assert_eq!(put(None, &b.cert_pem, &b.key_pem).await.0, 428);
    assert_eq!(
        put(Some("\"kb-stale\""), &b.cert_pem, &b.key_pem).await.0,
        412
    );
    let (status, rotated, _) = put(Some(&etag), &b.cert_pem, &b.key_pem).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["version"], 2);
    let (status, m) = w.material("partner-api").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["certificate"],
        b.cert_pem.as_str(),
        "the rotation is served"
    );
    // The same ETag again is stale now.
    assert_eq!(put(Some(&etag), &a.cert_pem, &a.key_pem).await.0, 412);
    assert!(w.audit().contains("\"credential.update\""));
}

/// A write's intent is audited before the write: with a fail-closed trail that cannot be
/// written (every write to /dev/full fails, even for root), the create is refused 503 and
/// nothing is stored — a write that stands is never missing from the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_audit_trail_cannot_record_is_not_made() {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .team_admin("payments-admin", "payments", PAYMENTS_ADMIN, &["payments"])
        .write(root);
    fixture::Config::tls()
        .with("[store]\nkind = \"file\"\npath = \"store\"\n[audit]\npath = \"/dev/full\"")
        .write(root);
    let server = Running::start(root, &ca.pem, 0, "info").await;
    let resp = server
        .client
        .post(server.url("/v1/credentials"))
        .bearer_auth(PAYMENTS_ADMIN)
        .json(&json!({ "name": "token", "team": "payments", "mode": "text", "value": "v1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
    for sub in ["credentials", "material", "records"] {
        let entries = std::fs::read_dir(root.join("store").join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(entries, 0, "store/{sub} holds a write the trail never saw");
    }
}

/// `PATCH` changes who may read a credential and where, never its material or version;
/// `…/versions` lists each material version's certificate facts, never a value; Tines' `PUT`
/// works as Tines' scripts send it (no `If-Match`): fields alone, or a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_versions_and_tines_update_change_what_they_name_and_nothing_else() {
    let w = world().await;
    let v1 = w.partner.client(w.dir.path(), "v1", "gw-v1");
    let (status, made, etag) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials",
            Some(json!({
                "name": "Partner API", "mode": "MTLS", "team_id": 2,
                "mtls_client_certificate": v1.cert_pem, "mtls_client_private_key": v1.key_pem,
                "mtls_root_certificate": w.partner.pem,
                "allowed_hosts": ["api.partner.example"],
            })),
            None,
        )
        .await;
    assert_eq!(status, 201, "{made}");
    assert!(etag.is_none(), "Tines' answers carry no ETag");
    let id = made["id"].as_u64().unwrap();
    let (_, shown, etag) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/credentials/partner_api",
            None,
            None,
        )
        .await;
    let etag = etag.unwrap();
    assert_eq!(shown["version"], 1);

    // PATCH: If-Match required; a team admin cannot make it GLOBAL; a host the policy
    // refuses is put back; a good one applies without a new material version.
    let path = "/v1/credentials/partner_api";
    let hosts = json!({ "allowed_hosts": ["api.partner.example", "api2.partner.example"] });
    let (status, _, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(hosts.clone()),
            None,
        )
        .await;
    assert_eq!(status, 428);
    let (status, v, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(json!({ "read_access": "GLOBAL" })),
            Some(&etag),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    let (status, v, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(json!({ "allowed_hosts": ["http://[::1"] })),
            Some(&etag),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, patched, new_etag) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(hosts.clone()),
            Some(&etag),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["allowed_hosts"], hosts["allowed_hosts"]);
    assert_eq!(
        patched["version"], 1,
        "a PATCH is not a new material version"
    );
    assert_ne!(new_etag.as_deref(), Some(etag.as_str()));
    let (status, _, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(hosts),
            Some(&etag),
        )
        .await;
    assert_eq!(status, 412, "the old ETag is stale");
    let (status, m) = w.material("partner_api").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["certificate"],
        v1.cert_pem.as_str(),
        "the material is unchanged"
    );
    let (status, info, _) = w
        .send(
            reqwest::Method::GET,
            GW,
            "/v1/credentials/partner_api",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["origin"], "api", "{info}");

    // Tines' PUT without If-Match: a description alone, then a rotation.
    let tines_path = format!("/api/v1/user_credentials/{id}");
    let (status, v, _) = w
        .send(
            reqwest::Method::PUT,
            PAYMENTS_ADMIN,
            &tines_path,
            Some(json!({ "mode": "MTLS", "description": "the partner's API" })),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["description"], "the partner's API");
    assert_eq!(v["name"], "Partner API");
    let v2 = w.partner.client(w.dir.path(), "v2", "gw-v2");
    let (status, v, _) = w
        .send(
            reqwest::Method::PUT,
            PAYMENTS_ADMIN,
            &tines_path,
            Some(json!({
                "mode": "MTLS",
                "mtls_client_certificate": flattened(&v2.cert_pem),
                "mtls_client_private_key": flattened(&v2.key_pem),
                "mtls_root_certificate": w.partner.pem,
            })),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["description"], "the partner's API",
        "kept through the rotation"
    );
    let (_, m) = w.material("partner_api").await;
    assert_eq!(m["certificate"], v2.cert_pem.as_str());
    // Another team's admin cannot update it by id.
    let (status, _, _) = w
        .send(
            reqwest::Method::PUT,
            FRAUD_ADMIN,
            &tines_path,
            Some(json!({ "mode": "MTLS", "description": "mine now" })),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Versions: newest first, fingerprints of the two certificates, no values.
    let (status, versions, _) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/v1/credentials/partner_api/versions",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{versions}");
    let list = versions["versions"].as_array().unwrap();
    let fingerprints: Vec<&str> = list
        .iter()
        .map(|v| v["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(
        fingerprints,
        [
            v2.fingerprint().replace(':', "").as_str(),
            v1.fingerprint().replace(':', "").as_str()
        ]
    );
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["by"], "payments-admin");
    assert!(!versions.to_string().contains("BEGIN"), "{versions}");
    let (status, _, _) = w
        .send(
            reqwest::Method::GET,
            FRAUD_ADMIN,
            "/v1/credentials/partner_api/versions?team=payments",
            None,
            None,
        )
        .await;
    assert_eq!(status, 403);
    let audit = w.audit();
    assert!(
        audit.contains("partner_api#allowed_hosts"),
        "the PATCH's audit line names the changed fields"
    );
}

/// `?dry_run=true` checks everything, writes nothing and says who will be able to read the
/// credential — by the same visibility rule reads are decided with — naming the consumers of
/// the caller's own teams only: another team is a count, and that count does not depend on
/// what the other team holds (issue 43: a dry run was a probe of other teams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_names_who_will_read_it() {
    let w = world().await;
    let client = w.partner.client(w.dir.path(), "c", "gw-client");
    let body = |access: &str, shared: &[&str]| {
        json!({
            "name": "partner-api", "team": "payments", "mode": "mtls",
            "client_certificate": client.cert_pem, "client_private_key": client.key_pem,
            "read_access": access, "shared_team_slugs": shared,
            "allowed_hosts": ["api.partner.example"],
        })
    };
    let readers = |v: &Value| {
        let mut r: Vec<String> = v["readers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        format!("{}:{}:{}", r["consumer"], r["team"], r["why"]).replace('"', "")
                    })
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    let (status, team_only, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials?dry_run=true",
            Some(body("TEAM", &[])),
            None,
        )
        .await;
    assert_eq!(status, 200, "{team_only}");
    assert_eq!(
        readers(&team_only),
        ["gw:payments:team", "payments-admin:payments:team"]
    );
    let (status, shared, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials?dry_run=true",
            Some(body("SPECIFIC_TEAMS", &["fraud"])),
            None,
        )
        .await;
    assert_eq!(status, 200, "{shared}");
    assert_eq!(
        readers(&shared),
        ["gw:payments:team", "payments-admin:payments:team"]
    );
    assert_eq!(shared["other_teams"], 1, "{shared}");
    assert!(!shared.to_string().contains("fraud-admin"), "{shared}");
    assert!(w.stored().is_empty(), "a dry run wrote {:?}", w.stored());
    // Fraud holding a credential of that name changes nothing in the answer.
    let fraud_own = w
        .send(
            reqwest::Method::POST,
            FRAUD_ADMIN,
            "/v1/credentials",
            Some(json!({ "name": "partner-api", "team": "fraud", "mode": "text", "value": "f" })),
            None,
        )
        .await;
    assert_eq!(fraud_own.0, 201, "{}", fraud_own.1);
    let (_, again, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials?dry_run=true",
            Some(body("SPECIFIC_TEAMS", &["fraud"])),
            None,
        )
        .await;
    assert_eq!(readers(&again), readers(&shared));
    assert_eq!(again["other_teams"], shared["other_teams"]);
    let audit = w.audit();
    assert!(audit.contains("\"credential.dry_run\""), "{audit}");
    assert_eq!(w.material("partner-api").await.0, 403, "nothing is served");
}

/// A rotation staged for a time (`activate_at`): the current material stays in force and is
/// answered with the staged one as `next` (`include_next`) until then, when the staged one
/// takes over at every door — with no write at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_staged_with_activate_at_is_next_until_it_takes_over() {
    let w = world().await;
    let (v1, v2) = (
        w.partner.client(w.dir.path(), "v1", "gw-v1"),
        w.partner.client(w.dir.path(), "v2", "gw-v2"),
    );
    let body = |c: &support::pki::Issued| {
        json!({
            "name": "partner-api", "team": "payments", "mode": "mtls",
            "client_certificate": c.cert_pem, "client_private_key": c.key_pem,
            "root_certificate": w.partner.pem,
            "allowed_hosts": ["api.partner.example"],
        })
    };
    let (status, v, etag) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials",
            Some(body(&v1)),
            None,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // Not for a create, not in the past.
    let mut early = body(&v2);
    early["activate_at"] = json!("2020-01-01T00:00:00Z");
    let (status, v, _) = w
        .send(
            reqwest::Method::PUT,
            PAYMENTS_ADMIN,
            "/v1/credentials/partner-api",
            Some(early),
            etag.as_deref(),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(4);
    let at_text = humantime::format_rfc3339_seconds(at).to_string();
    let at = humantime::parse_rfc3339(&at_text).unwrap();
    let mut staged = body(&v2);
    // Any RFC 3339 offset is taken (`+00:00` here; `Z` was the only form once).
    staged["activate_at"] = json!(at_text.replace('Z', "+00:00"));
    let (status, v, _) = w
        .send(
            reqwest::Method::PUT,
            PAYMENTS_ADMIN,
            "/v1/credentials/partner-api",
            Some(staged),
            etag.as_deref(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["version"].clone(), v["current_version"].clone()),
        (json!(2), json!(1)),
        "{v}"
    );

    let next_of = || async {
        let (s, m, _) = w
            .send(
                reqwest::Method::POST,
                GW,
                "/v1/credentials/partner-api/material",
                Some(json!({ "host": "api.partner.example", "include_next": true })),
                None,
            )
            .await;
        assert_eq!(s, 200, "{m}");
        m
    };
    let m = next_of().await;
    assert_eq!(
        m["certificate"],
        v1.cert_pem.as_str(),
        "v1 is in force until activate_at"
    );
    assert_eq!(m["next"]["certificate"], v2.cert_pem.as_str());
    assert_eq!(m["next"]["not_before"], at_text.as_str());
    assert_eq!(
        w.material("partner-api").await.1["certificate"],
        v1.cert_pem.as_str()
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = next_of().await;
        if m["certificate"] == v2.cert_pem.as_str() {
            assert!(
                std::time::SystemTime::now() >= at,
                "v2 in force before activate_at"
            );
            assert!(m.get("next").is_none(), "nothing staged any more: {m}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "v2 never took over");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Two trusts (issue 50), through both management shapes: `upstream_ca` (Tines' extension
/// `mtls_upstream_ca`) is stored beside the root and answered as the material's `ca`; the root
/// only anchors the client chain. A root bundle that is both trusts and holds a CA the client
/// chain does not rest on is stored — it is today's meaning — with a warning naming that CA's
/// fingerprint, in the write's answer and on the metadata route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ca_is_stored_apart_and_a_mixed_root_bundle_is_warned_about() {
    use sha2::Digest as _;
    let w = world().await;
    let client = w.partner.client(w.dir.path(), "c", "gw-client");
    let upstream = Ca::new("partner's server CA");
    let body = |name: &str, root: String, upstream_ca: Option<&str>| {
        let mut b = json!({
            "name": name, "team": "payments", "mode": "mtls",
            "client_certificate": client.cert_pem, "client_private_key": client.key_pem,
            "root_certificate": root, "allowed_hosts": ["api.partner.example"],
        });
        if let Some(u) = upstream_ca {
            b["upstream_ca"] = json!(u);
        }
        b
    };
    let (status, split, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials",
            Some(body("split", w.partner.pem.clone(), Some(&upstream.pem))),
            None,
        )
        .await;
    assert_eq!(status, 201, "{split}");
    assert!(split.get("warnings").is_none(), "{split}");
    let (status, m) = w.material("split").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["ca"],
        upstream.pem.as_str(),
        "the upstream's trust is upstream_ca"
    );

    let mixed_root = format!("{}{}", w.partner.pem, upstream.pem);
    let (status, mixed, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials",
            Some(body("mixed", mixed_root, None)),
            None,
        )
        .await;
    assert_eq!(status, 201, "{mixed}");
    let der = keybroker::testing::policy::pem_certificates(upstream.pem.as_bytes()).unwrap();
    let loose = hex::encode(sha2::Sha256::digest(&der[0]));
    assert!(
        mixed["warnings"][0].as_str().unwrap().contains(&loose),
        "{mixed}"
    );
    let (status, info, _) = w
        .send(
            reqwest::Method::GET,
            GW,
            "/v1/credentials/mixed",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert!(
        info["warnings"][0].as_str().unwrap().contains(&loose),
        "{info}"
    );
    let (_, m) = w.material("mixed").await;
    assert!(
        m["ca"].as_str().unwrap().contains(&upstream.pem),
        "today's meaning kept"
    );

    // Tines' shape, with keybroker's extension field; a client certificate as upstream_ca
    // (no CA) is refused.
    let (status, tines, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/api/v1/user_credentials",
            Some(json!({
                "name": "tines split", "mode": "MTLS", "team_id": 2,
                "mtls_client_certificate": client.cert_pem,
                "mtls_client_private_key": client.key_pem,
                "mtls_root_certificate": w.partner.pem,
                "mtls_upstream_ca": upstream.pem,
                "allowed_hosts": ["api.partner.example"],
            })),
            None,
        )
        .await;
    assert_eq!(status, 201, "{tines}");
    let (_, m) = w.material("tines_split").await;
    assert_eq!(m["ca"], upstream.pem.as_str());
    let (status, refused, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials",
            Some(body(
                "not-a-ca",
                w.partner.pem.clone(),
                Some(&client.cert_pem),
            )),
            None,
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["details"][0]["role"], "upstream_ca",
        "{refused}"
    );
}

/// RFC 9110 (issue 44): the ETag a manager gets from `GET /v1/credentials/{name}` is what
/// `If-Match` on that URI compares — a PATCH with it applies; once the credential changed, the
/// same tag is stale (412).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etag_of_a_get_on_a_credentials_uri_is_what_if_match_there_compares() {
    let w = world().await;
    let (status, made, _) = w
        .send(
            reqwest::Method::POST,
            PAYMENTS_ADMIN,
            "/v1/credentials",
            Some(json!({ "name": "etag-cred", "team": "payments", "mode": "text", "value": "v1", "allowed_hosts": ["api.partner.example"] })),
            None,
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (status, _, tag) = w
        .send(
            reqwest::Method::GET,
            PAYMENTS_ADMIN,
            "/v1/credentials/etag-cred",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let tag = tag.expect("an ETag");
    let patch = |description: &'static str| json!({ "description": description });
    let (status, patched, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            "/v1/credentials/etag-cred",
            Some(patch("first")),
            Some(&tag),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (status, stale, _) = w
        .send(
            reqwest::Method::PATCH,
            PAYMENTS_ADMIN,
            "/v1/credentials/etag-cred",
            Some(patch("second")),
            Some(&tag),
        )
        .await;
    assert_eq!(status, 412, "{stale}");
}

/// Tines' numeric `team_id` is no map to other teams: an ID of a team the caller may not
/// manage and an ID no team has answer alike (403), naming no team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tines_team_id_of_another_team_answers_like_one_no_team_has() {
    let w = world().await;
    let body = |id: u64| json!({ "name": "probe", "mode": "TEXT", "team_id": id, "value": "x" });
    let (status, theirs, _) = w
        .send(
            reqwest::Method::POST,
            FRAUD_ADMIN,
            "/api/v1/user_credentials",
            Some(body(2)),
            None,
        )
        .await;
    let (status_none, nobodys, _) = w
        .send(
            reqwest::Method::POST,
            FRAUD_ADMIN,
            "/api/v1/user_credentials",
            Some(body(99)),
            None,
        )
        .await;
    assert_eq!((status, status_none), (403, 403), "{theirs} {nobodys}");
    assert_eq!(theirs["error"]["code"], nobodys["error"]["code"]);
    assert!(!theirs.to_string().contains("payments"), "{theirs}");
}
