//! One front hall: every door — the API, the Vault-compatible API, the egress proxy — keeps
//! THREATS rows 27 (refusals budgeted per peer address) and 32 (a repeated or conflicting
//! credential counts for no one), is counted with its `door` label, and `/metrics` on the
//! consumer-facing listener names nothing to an anonymous caller. Each row fails when a door
//! bypasses the shared piece.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use support::fixture;
use support::server::{Running, folder};

const GW: &str = "doors-gw-token";
const OTHER: &str = "doors-other-token";
const OPS: &str = "doors-ops-token";

struct World {
    dir: tempfile::TempDir,
    server: Running,
    vault_port: u16,
    egress: u16,
}

async fn world() -> World {
    let (dir, ca) = folder("door-secret");
    let root = dir.path();
    let host = "vault_api_host = \"api.partner.example\"";
    fixture::Policy::new()
        .team("payments")
        .consumer("gw", "payments", GW)
        .and(host)
        .consumer("other", "payments", OTHER)
        .and(host)
        .consumer("ops", "payments", OPS)
        .and("admin = true")
        .grant("payments", "files", &["app/*"], &["api.partner.example"])
        .write(root);
    fixture::Config::tls()
        .with("[vault_api]\nlisten = \"127.0.0.1:0\"\n[egress]\nlisten = \"127.0.0.1:0\"\ntimeout = \"5s\"")
        .files("files", "secrets")
        .audit()
        .write(root);
    // Every listener on port 0: where each is comes from the ready file.
    let server = Running::start(root, &ca.pem, 0, "info").await;
    World {
        dir,
        vault_port: server.port_of("vault_api"),
        egress: server.port_of("egress"),
        server,
    }
}

/// A plain HTTP client whose connections leave from `from` (each door gets its own address,
/// so one door's budget is not spent by another's refusals).
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

impl World {
    fn vault(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v1/{path}", self.vault_port)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn metrics(&self) -> String {
        self.server
            .client
            .get(self.server.url("/metrics"))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// THREATS row 32 at every door: two credential headers, or two that disagree, are refused
/// with 400 and audited, never settled by order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_32_at_every_door_a_repeated_or_conflicting_credential_counts_for_no_one() {
    let w = world().await;
    let http = client_from([127, 0, 0, 1]);
    // The main API.
    let resp = w
        .server
        .client
        .get(w.server.url("/v1/credentials"))
        .header("authorization", format!("Bearer {GW}"))
        .header("authorization", format!("Bearer {OTHER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The Vault API: two X-Vault-Token; X-Vault-Token and Authorization naming different
    // consumers; the same token twice over both headers is one credential.
    let read = w.vault("files/data/app/token");
    let resp = http
        .get(&read)
        .header("x-vault-token", GW)
        .header("x-vault-token", OTHER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("more than one"),
        "{body}"
    );
    let resp = http
        .get(&read)
        .header("x-vault-token", GW)
        .header("authorization", format!("Bearer {OTHER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .get(&read)
        .header("x-vault-token", GW)
        .header("authorization", format!("Bearer {GW}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // Response wrapping is refused, not ignored.
    let resp = http
        .get(&read)
        .header("x-vault-token", GW)
        .header("x-vault-wrap-ttl", "60s")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The egress proxy.
    let proxy = reqwest::Proxy::http(format!("http://127.0.0.1:{}", w.egress)).unwrap();
    let proxied = reqwest::Client::builder()
        .proxy(proxy)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = proxied
        .get("http://api.partner.example/")
        .header("proxy-authorization", format!("Bearer {GW}"))
        .header("proxy-authorization", format!("Bearer {OTHER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "repeated_authorization");
    let refusals = w
        .audit()
        .into_iter()
        .filter(|l| {
            l["action"] == "authenticate"
                && (l["reason"] == "repeated_authorization"
                    || l["reason"] == "conflicting_credentials")
        })
        .count();
    assert_eq!(refusals, 4, "every door audits the refusal");
}

/// THREATS row 27 at every door: a flood of anonymous requests from one address writes at
/// most the address's budget of audit lines (and a summary), whichever door it knocks on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_27_at_every_door_anonymous_refusals_are_budgeted_per_address() {
    let w = world().await;
    const FLOOD: usize = 60;
    let before = w.audit().len();
    let vault = client_from([127, 0, 0, 2]);
    for _ in 0..FLOOD {
        let resp = vault
            .get(w.vault("files/data/app/token"))
            .header("x-vault-token", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    let proxy = reqwest::Proxy::http(format!("http://127.0.0.1:{}", w.egress)).unwrap();
    let proxied = reqwest::Client::builder()
        .proxy(proxy)
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..FLOOD {
        let resp = proxied
            .get("http://api.partner.example/")
            .header("proxy-authorization", "Bearer wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 407);
    }
    let lines = w.audit();
    let written = lines[before..]
        .iter()
        .filter(|l| l["action"] == "authenticate")
        .count();
    // Ten a minute per address, two addresses; a summary line at most per address.
    assert!(
        written <= 2 * (10 + 1),
        "{written} audit lines for {} refusals",
        2 * FLOOD
    );
    assert!(
        written >= 2 * 10,
        "each door audits its refusals: {written}"
    );
    // Every door is counted, with its label.
    let metrics = w.metrics().await;
    for door in ["api", "vault_api", "egress"] {
        assert!(
            metrics.contains(&format!("keybroker_requests_total{{door=\"{door}\"")),
            "{door}: {metrics}"
        );
    }
    assert!(metrics.contains(
        "keybroker_requests_total{door=\"egress\",route=\"proxy\",decision=\"unauthenticated\"} 60"
    ));
    // Anonymous `/metrics` on the consumer-facing listener names nothing.
    let anonymous = w
        .server
        .client
        .get(w.server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(!anonymous.text().await.unwrap().contains("keybroker_"));
}

/// The one classification of failures, and each door's row: the main API's status, the Vault
/// API's, the egress proxy's, the CLI's exit code, the CCP API's status and `ErrorCode`. A door that maps a class on its own (or a
/// class added without a row) fails here.
#[tokio::test]
async fn each_failure_class_has_one_answer_per_door() {
    use keybroker::testing::broker::Failure::{self, *};
    #[rustfmt::skip]
    /// A class; the main API's, the Vault API's and the egress proxy's status; the CLI's exit
    /// code; the CCP API's status and `ErrorCode`.
    type Row = (Failure, u16, u16, u16, u8, (u16, &'static str));
    let table: &[Row] = &[
        //  class                       api  vault egress exit  ccp (CCP's status and ErrorCode)
        (Unauthenticated, 401, 403, 407, 1, (403, "APPAP306E")),
        (Invalid, 400, 400, 400, 1, (400, "AIMWS030E")),
        (TooMany, 400, 400, 400, 1, (400, "AIMWS030E")),
        (TooLarge, 413, 413, 413, 1, (400, "AIMWS030E")),
        (Unresolved, 400, 400, 400, 1, (404, "APPAP004E")),
        (NotFound, 404, 404, 403, 1, (404, "APPAP004E")),
        (Denied, 403, 403, 403, 1, (404, "APPAP004E")),
        (Ambiguous, 409, 409, 400, 1, (400, "APPAP227E")),
        (Unavailable, 503, 503, 503, 75, (400, "APPAP007E")),
        (
            SourceCredentialsRefused,
            503,
            503,
            503,
            77,
            (400, "APPAP007E"),
        ),
        (SourceMisconfigured, 503, 503, 503, 2, (400, "APPAP007E")),
        (AuditUnavailable, 503, 503, 503, 75, (400, "APPAP007E")),
        (Rejected, 502, 502, 502, 1, (500, "APPAP004E")),
        (Broken, 502, 502, 502, 1, (500, "APPAP004E")),
    ];
    assert_eq!(table.len(), Failure::ALL.len(), "every class has a row");
    for &(class, api, vault, egress, exit, ccp) in table {
        let (ccp_status, ccp_code, _) = keybroker::testing::ccp_api::status(class);
        let got = (
            keybroker::testing::api::status(class).as_u16(),
            keybroker::testing::vault_api::status(class).0.as_u16(),
            keybroker::testing::egress::status(class).0.as_u16(),
            keybroker::testing::exit::code(class),
            (ccp_status.as_u16(), ccp_code),
        );
        assert_eq!(got, (api, vault, egress, exit, ccp), "{class:?}");
        // Each dialect's one renderer gives the row's status and its own error shape.
        let vault_answer = rendered(keybroker::testing::vault_api::VaultError::from(class)).await;
        assert_eq!(vault_answer.0, vault, "{class:?}");
        assert!(vault_answer.1["errors"].is_array(), "{class:?}");
        let ccp_answer = rendered(keybroker::testing::ccp_api::CcpError::from(class)).await;
        assert_eq!(
            (ccp_answer.0, ccp_answer.1["ErrorCode"].as_str()),
            (ccp.0, Some(ccp.1))
        );
    }
}

async fn rendered(e: impl axum::response::IntoResponse) -> (u16, Value) {
    let answer = e.into_response();
    let status = answer.status().as_u16();
    let body = axum::body::to_bytes(answer.into_body(), 64 * 1024)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}
