//! The egress proxy (docs/EGRESS.md) with curl against a real nginx that requires a client
//! certificate and answers with the subject it verified: keybroker makes the mTLS call, the
//! private key never reaches the caller, and refusals never reach the upstream.

mod support {
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::process::Command;

use support::pki::Ca;
use support::server::{Running, folder, token_sha256};

const GW: &str = "egress-gw-token";
const OTHER: &str = "egress-other-token";

struct World {
    _nginx: support::nginx::Nginx,
    dir: tempfile::TempDir,
    partner: Ca,
    _server: Running,
    egress: u16,
    upstream: u16,
    key_line: String,
}

async fn world() -> World {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let prefix = root.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    // The upstream: its own server CA (the credential's root_certificate), clients of the
    // partner CA only.
    let upstream_ca = Ca::new("upstream CA");
    let upstream = upstream_ca.server_for(&prefix, "upstream", &["api.partner.example"]);
    // `[egress] ca_cert`: what a credential without a root_certificate trusts.
    upstream_ca.write(&root.join("upstream-ca.pem"));
    let partner = Ca::new("partner CA");
    partner.write(&prefix.join("partner-ca.pem"));
    let client = partner.client(root, "gw-client", "gw-client");
    std::fs::create_dir_all(root.join("secrets/partner")).unwrap();
    std::fs::write(
        root.join("secrets/partner/api.json"),
        serde_json::json!({
            // The root bundle anchors the client's chain (verified credentials) and is the
            // trust for the upstream's certificate.
            "cert": client.cert_pem, "key": client.key_pem,
            "ca": format!("{}{}", upstream_ca.pem, partner.pem),
            // Two trusts apart: the client chain's anchor, and the upstream's CA.
            "client_ca": partner.pem,
            "upstream": upstream_ca.pem,
            "unrelated": Ca::new("unrelated CA").pem,
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("secrets/partner/wrong-ca.json"),
        serde_json::json!({
            "cert": client.cert_pem, "key": client.key_pem,
            "ca": format!("{}{}", partner.pem, Ca::new("some other CA").pem),
        })
        .to_string(),
    )
    .unwrap();
    // Behind nginx's `/cut`: an answer that announces 100,000 bytes, sends 10 and closes.
    let cutter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cut_port = cutter.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in cutter.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789");
        }
    });
    let (nginx, ports) = support::nginx::Nginx::start(&prefix, 1, |ports| {
        let up = ports[0];
        format!(
            r#"
  access_log {p}/logs/access.log;
  server {{
    listen 127.0.0.1:{up} ssl;
    server_name api.partner.example;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {p}/partner-ca.pem;
    ssl_verify_client on;
    location /redirect {{ return 302 https://elsewhere.example/; }}
    location /cut {{ proxy_pass http://127.0.0.1:{cut_port}; }}
    location / {{ return 200 "verified $ssl_client_s_dn for $request_method $request_uri x=$http_x_forwarded fwd=$http_forwarded xff=$http_x_forwarded_for\n"; }}
  }}
"#,
            p = prefix.display(),
            cert = upstream.cert.display(),
            key = upstream.key.display(),
        )
    });
    let up = ports[0];
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "payments"
[[team]]
slug = "other"
[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{gw}"
[[consumer]]
name = "other"
team = "other"
token_sha256 = "{other}"
[[credential]]
name = "partner-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example", "localhost"]
client_certificate = "$SECRET_files:partner/api $KEY_cert"
client_private_key = "$SECRET_files:partner/api $KEY_key"
root_certificate = "$SECRET_files:partner/api $KEY_ca"
[[credential]]
name = "partner-v1"
mode = "mtls"
team = "payments"
allowed_hosts = ["https://api.partner.example:{up}/v1/"]
client_certificate = "$SECRET_files:partner/api $KEY_cert"
client_private_key = "$SECRET_files:partner/api $KEY_key"
root_certificate = "$SECRET_files:partner/api $KEY_ca"
[[credential]]
name = "split"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/api $KEY_cert"
client_private_key = "$SECRET_files:partner/api $KEY_key"
root_certificate = "$SECRET_files:partner/api $KEY_client_ca"
upstream_ca = "$SECRET_files:partner/api $KEY_upstream"
[[credential]]
name = "split-elsewhere"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/api $KEY_cert"
client_private_key = "$SECRET_files:partner/api $KEY_key"
root_certificate = "$SECRET_files:partner/api $KEY_ca"
upstream_ca = "$SECRET_files:partner/api $KEY_unrelated"
[[credential]]
name = "no-root"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/api $KEY_cert"
client_private_key = "$SECRET_files:partner/api $KEY_key"
[[credential]]
name = "wrong-root"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/wrong-ca $KEY_cert"
client_private_key = "$SECRET_files:partner/wrong-ca $KEY_key"
root_certificate = "$SECRET_files:partner/wrong-ca $KEY_ca"
"#,
            gw = token_sha256(GW),
            other = token_sha256(OTHER),
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("kb.toml"),
        r#"
policies = "policies"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
[egress]
listen = "127.0.0.1:0"
resolve = { "api.partner.example" = "127.0.0.1" }
timeout = "10s"
ca_cert = "upstream-ca.pem"
[cache]
ttl = "1s"
[[source]]
name = "files"
kind = "file"
path = "secrets"
[audit]
path = "audit.log"
"#,
    )
    .unwrap();
    let server = Running::start(root, &ca.pem, 0, "info").await;
    let egress = server.port_of("egress");
    World {
        _nginx: nginx,
        partner,
        key_line: client.key_pem.lines().nth(1).unwrap().to_owned(),
        dir,
        _server: server,
        egress,
        upstream: up,
    }
}

impl World {
    /// curl through the proxy; (HTTP status, body).
    fn curl(
        &self,
        token: &str,
        credential: Option<&str>,
        url: &str,
        extra: &[&str],
    ) -> (u16, String) {
        let mut args = vec![
            "-s".to_owned(),
            "-o".to_owned(),
            "-".to_owned(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
            "-x".to_owned(),
            format!("http://127.0.0.1:{}", self.egress),
            "-H".to_owned(),
            format!("Proxy-Authorization: Bearer {token}"),
        ];
        if let Some(c) = credential {
            args.push("-H".to_owned());
            args.push(format!("Keybroker-Credential: {c}"));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(url.to_owned());
        let out = Command::new("curl")
            .args(&args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Requests the upstream has logged.
    fn upstream_requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("nginx/logs/access.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Requests the upstream has logged, once at least `n` are: nginx writes its access log
    /// line after the answer leaves, so curl can hold a 200 before its line is there.
    fn upstream_requests_at_least(&self, n: usize) -> usize {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = self.upstream_requests();
            if seen >= n {
                return seen;
            }
            assert!(
                std::time::Instant::now() < end,
                "the upstream logged {seen} of {n} requests"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.upstream)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_reaches_an_mtls_upstream_with_the_credentials_certificate() {
    let w = world().await;
    let start = w.upstream_requests();
    let (status, body) = w.curl(
        GW,
        Some("partner-api"),
        &w.url("api.partner.example", "/v1/accounts?x=1"),
        &[
            "-H",
            "X-Forwarded: kept",
            "-H",
            "Forwarded: for=10.0.0.1",
            "-H",
            "X-Forwarded-For: 10.0.0.1",
        ],
    );
    assert_eq!(status, 200, "{body}");
    // The caller's claims of origin are dropped (THREATS row 41); other headers pass.
    assert!(
        body.contains("verified CN=gw-client for GET /v1/accounts?x=1 x=kept fwd= xff=\n"),
        "{body}"
    );
    assert!(
        !body.contains(&w.key_line),
        "the answer never holds the private key"
    );
    // Without Keybroker-Credential: the one credential whose allowed_hosts match is not unique
    // (partner-api and wrong-root both fit), so it must be named.
    let (status, body) = w.curl(GW, None, &w.url("api.partner.example", "/"), &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("credential_required"));
    // The choice is the broker's read like a named one: refused, it is audited too.
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"via\":\"egress\"")
            && l.contains("\"reason\":\"several_credentials_fit\"")),
        "{audit}"
    );
    // A name given twice, or that is no name, is refused — never read as "none given", which
    // would pick one for the caller — and nothing reaches the upstream.
    let before = w.upstream_requests_at_least(start + 1);
    for (named, extra) in [
        (
            Some("partner-api"),
            &["-H", "Keybroker-Credential: wrong-root"][..],
        ),
        (Some("../partner-api"), &[][..]),
        (Some("Partner-API"), &[][..]),
    ] {
        let (status, body) = w.curl(GW, named, &w.url("api.partner.example", "/"), extra);
        assert_eq!(status, 400, "{named:?} {extra:?}: {body}");
        assert!(body.contains("invalid"), "{body}");
    }
    assert_eq!(w.upstream_requests(), before);
    // Redirects come back as they are, never followed.
    let (status, _) = w.curl(
        GW,
        Some("partner-api"),
        &w.url("api.partner.example", "/redirect"),
        &[],
    );
    assert_eq!(status, 302);
    // A rotated credential is used by the next request once the cache has seen it (the
    // material is read through the cache per request; the file source's TTL here is 1 s).
    let client2 = w.partner.client(w.dir.path(), "gw-client-2", "gw-client-2");
    let mut secret: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.dir.path().join("secrets/partner/api.json")).unwrap(),
    )
    .unwrap();
    secret["cert"] = client2.cert_pem.clone().into();
    secret["key"] = client2.key_pem.clone().into();
    std::fs::write(
        w.dir.path().join("secrets/partner/api.json"),
        secret.to_string(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = w.curl(
            GW,
            Some("partner-api"),
            &w.url("api.partner.example", "/"),
            &[],
        );
        assert_eq!(status, 200, "{body}");
        if body.contains("CN=gw-client-2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation was not used: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Each request through the proxy is an audit line with via egress.
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"via\":\"egress\""), "{audit}");
    assert!(!audit.contains(&w.key_line));
}

/// An answer cut short by the upstream is an error at the client, never a complete-looking
/// short body (THREATS row 41): its Content-Length is kept and the connection is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_upstream_is_an_error_at_the_client() {
    let w = world().await;
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-x",
            &format!("http://127.0.0.1:{}", w.egress),
            "-H",
            &format!("Proxy-Authorization: Bearer {GW}"),
            "-H",
            "Keybroker-Credential: partner-api",
            &w.url("api.partner.example", "/cut"),
        ])
        .output()
        .expect("curl runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("200 "), "the head arrived: {said}");
    // curl 18: "transfer closed with outstanding read data remaining".
    assert_eq!(out.status.code(), Some(18), "{said}");
}

/// URL-form `allowed_hosts` match on egress, against the https URL with the path decided on
/// (dot segments resolved as WHATWG parsing does, and that path is the one sent); an encoded
/// `/`, `\` or `.` is refused, since the upstream could decode it into another path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_form_allowed_hosts_match_the_path_decided_on() {
    let w = world().await;
    let v1 = |path: &str| {
        w.curl(
            GW,
            Some("partner-v1"),
            &w.url("api.partner.example", path),
            &["--path-as-is"],
        )
    };
    let start = w.upstream_requests();
    let (status, body) = v1("/v1/accounts");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("for GET /v1/accounts "), "{body}");
    let before = w.upstream_requests_at_least(start + 1);
    for outside in ["/admin", "/v1/../admin", "/v1/./../admin", "/v1"] {
        let (status, body) = v1(outside);
        assert_eq!(status, 403, "{outside}: {body}");
    }
    for ambiguous in ["/v1/..%2Fadmin", "/v1/%2e%2e/admin", "/v1/%2E%2E%2fadmin"] {
        let (status, body) = v1(ambiguous);
        assert_eq!(status, 400, "{ambiguous}: {body}");
        assert!(body.contains("ambiguous_path"), "{body}");
    }
    assert_eq!(
        w.upstream_requests(),
        before,
        "no refusal reached the upstream"
    );
    // A path that resolves inside the prefix is sent resolved.
    let (status, body) = v1("/v1/x/../accounts");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("for GET /v1/accounts "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_34_refusals_never_reach_the_upstream() {
    let w = world().await;
    let before = w.upstream_requests();
    // A host outside allowed_hosts.
    let (status, body) = w.curl(GW, Some("partner-api"), &w.url("evil.example", "/"), &[]);
    assert_eq!(status, 403, "{body}");
    // An allowed name that resolves to a loopback address, not pinned by `resolve`.
    let (status, body) = w.curl(GW, Some("partner-api"), &w.url("localhost", "/"), &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("internal_destination"), "{body}");
    // CONNECT: refused with 405.
    let connect = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "-p",
            "-x",
            &format!("http://127.0.0.1:{}", w.egress),
            &format!("https://api.partner.example:{}/", w.upstream),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&connect.stdout), "405");
    // TRACE would echo the request (Proxy-Authorization included) back: refused, never
    // forwarded (THREATS row 41).
    let (status, body) = w.curl(
        GW,
        Some("partner-api"),
        &w.url("api.partner.example", "/"),
        &["-X", "TRACE"],
    );
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("trace_refused"), "{body}");
    // A consumer that may not read the credential.
    let (status, _) = w.curl(
        OTHER,
        Some("partner-api"),
        &w.url("api.partner.example", "/"),
        &[],
    );
    assert_eq!(status, 403);
    // No or a wrong token.
    let (status, _) = w.curl(
        "nope",
        Some("partner-api"),
        &w.url("api.partner.example", "/"),
        &[],
    );
    assert_eq!(status, 407);
    assert_eq!(
        w.upstream_requests(),
        before,
        "the upstream saw none of these"
    );
    // A wrong root_certificate: the upstream's certificate is not trusted — a 502, and the
    // TLS handshake fails before any request is sent.
    let (status, body) = w.curl(
        GW,
        Some("wrong-root"),
        &w.url("api.partner.example", "/"),
        &[],
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_untrusted"), "{body}");
    assert_eq!(w.upstream_requests(), before);
}

/// Two trusts (issue 50): with `upstream_ca`, it alone is the trust for the upstream and
/// `root_certificate` only anchors the client chain. A credential whose root bundle holds the
/// upstream's CA but whose `upstream_ca` is another CA is refused by the upstream's certificate;
/// one whose `upstream_ca` is the upstream's CA (and whose root is the client CA alone) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ca_alone_is_the_upstreams_trust() {
    let w = world().await;
    let start = w.upstream_requests();
    let (status, body) = w.curl(GW, Some("split"), &w.url("api.partner.example", "/"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("verified CN=gw-client"), "{body}");
    let before = w.upstream_requests_at_least(start + 1);
    let (status, body) = w.curl(
        GW,
        Some("split-elsewhere"),
        &w.url("api.partner.example", "/"),
        &[],
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_untrusted"), "{body}");
    assert_eq!(w.upstream_requests(), before);
}

/// A credential without a `root_certificate` (an issued certificate's CA is its client's
/// issuer, not the upstream's) verifies upstreams against `[egress] ca_cert`; a credential
/// with its own root keeps trusting only that root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_ca_cert_verifies_upstreams_for_credentials_without_a_root() {
    let w = world().await;
    let (status, body) = w.curl(GW, Some("no-root"), &w.url("api.partner.example", "/"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("verified"), "{body}");
    let (status, body) = w.curl(
        GW,
        Some("wrong-root"),
        &w.url("api.partner.example", "/"),
        &[],
    );
    assert_eq!(
        status, 502,
        "the bundle replaced a credential's own root: {body}"
    );
}
