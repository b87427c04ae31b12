//! An attack review of `POST /v1/credentials/{name}/sign` (docs/PKI.md "Signing", THREATS row
//! 85), kept as tests: CSRs built byte by byte (a second extension request, a hidden second
//! block, odd names and encodings, compressed points), racing the budget, the egress proxy's
//! refusals. Each asserts the secure behaviour; the three `attack_` tests failed before the
//! fixes they name (the CSR check reads every attribute, one block only, and the signer is sent
//! the DER that was checked). What a case printed is evidence when one fails.

#![allow(
    dead_code,
    reason = "helpers shared with tests/pki.rs's shape, not all used here"
)]
#![expect(
    clippy::print_stderr,
    reason = "each case prints what it got, for a failing run"
)]

mod support {
    pub mod fixture;
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod pki_bao;
    pub mod ports;
    pub mod server;
}

use serde_json::{Value, json};
use x509_parser::prelude::*;

use support::fixture;
use support::openbao::OpenBao;
use support::pki_bao::{audited_bao, pem_der, pki_mount, sign, signed_count};
use support::server::{Running, folder};

const GW: &str = "pki-gw-token";
const OPS: &str = "pki-ops-token";
const INTRUDER: &str = "pki-intruder-token";

async fn serve(bao: &OpenBao, extra: &str) -> (tempfile::TempDir, Running) {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .consumer("gw", "payments", GW)
        .and("vault_api_host = \"api.partner.example\"")
        .consumer("ops", "payments", OPS)
        .and("admin = true")
        .team("other")
        .consumer("intruder", "other", INTRUDER)
        .and("[[credential]]\nname = \"partner-sign\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:gateway-sign $KEY_certificate\"")
        .and("[[credential]]\nname = \"partner-pki\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:gateway $KEY_certificate\"\nclient_private_key = \"$SECRET_pki:gateway $KEY_private_key\"\nroot_certificate = \"$SECRET_pki:gateway $KEY_issuing_ca\"")
        .write(root);
    fixture::Config::tls()
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.gateway]\nrole = \"gateway\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\n[source.profiles.gateway-sign]\nrole = \"signer\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\nissue = \"sign\"\nkey_type = \"ec\"\n{extra}",
            bao.addr
        ))
        .audit()
        .write(root);
    std::fs::write(root.join("server-ca.pem"), &ca.pem).unwrap();
    let running = Running::start(root, &ca.pem, 0, "info").await;
    (dir, running)
}

/// Requests to `path` OpenBao saw (answered or refused).
fn requested(audit: &std::path::Path, path: &str) -> usize {
    let path = format!("\"path\":\"{path}\"");
    String::from_utf8_lossy(&std::fs::read(audit).unwrap())
        .lines()
        .filter(|l| l.contains("\"type\":\"request\"") && l.contains(&path))
        .count()
}

async fn sign_with(s: &Running, token: &str, name: &str, body: Value) -> (u16, Value) {
    let resp = s
        .client
        .post(s.url(&format!("/v1/credentials/{name}/sign")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------
// A tiny DER writer and a hand-made CSR, signed by openssl with the attacker's own key.

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}
fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}
fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &cat(parts))
}
fn set(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x31, &cat(parts))
}
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
const OID_SAN: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
const OID_BC: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x13];
const OID_EXT_REQ: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e,
];
const OID_CHALLENGE: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07,
];
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

fn utf8(s: &str) -> Vec<u8> {
    der(0x0c, s.as_bytes())
}
fn printable(s: &str) -> Vec<u8> {
    der(0x13, s.as_bytes())
}
/// AttributeTypeAndValue.
fn atv(oid: &[u8], value: Vec<u8>) -> Vec<u8> {
    seq(&[oid.to_vec(), value])
}
/// A Name of one RDN per item.
fn name(rdns: &[Vec<u8>]) -> Vec<u8> {
    seq(&rdns
        .iter()
        .map(|a| set(std::slice::from_ref(a)))
        .collect::<Vec<_>>())
}
fn cn_name(cn: &str) -> Vec<u8> {
    name(&[atv(OID_CN, utf8(cn))])
}
enum Gn<'a> {
    Dns(&'a str),
    Ip([u8; 4]),
    Uri(&'a str),
    Email(&'a str),
    /// otherName: type-id OID bytes (full TLV), value DER.
    Other(Vec<u8>, Vec<u8>),
}
fn san(names: &[Gn<'_>]) -> Vec<u8> {
    let gns: Vec<Vec<u8>> = names
        .iter()
        .map(|n| match n {
            Gn::Dns(d) => der(0x82, d.as_bytes()),
            Gn::Ip(ip) => der(0x87, ip),
            Gn::Uri(u) => der(0x86, u.as_bytes()),
            Gn::Email(e) => der(0x81, e.as_bytes()),
            Gn::Other(oid, v) => der(0xa0, &cat(&[oid.clone(), der(0xa0, v)])),
        })
        .collect();
    seq(&gns)
}
fn ext(oid: &[u8], critical: bool, value: Vec<u8>) -> Vec<u8> {
    let mut parts = vec![oid.to_vec()];
    if critical {
        parts.push(vec![0x01, 0x01, 0xff]);
    }
    parts.push(der(0x04, &value));
    seq(&parts)
}
/// An extensionRequest attribute holding `exts`.
fn ext_req(exts: &[Vec<u8>]) -> Vec<u8> {
    seq(&[OID_EXT_REQ.to_vec(), set(&[seq(exts)])])
}

/// A P-256 key made by openssl in `dir`; its SPKI (DER).
fn p256_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (key, public.stdout)
}

/// A CSR (DER) of `subject`, `spki` and `attributes` (each a full Attribute), signed with `key`.
fn csr_der(
    key: &std::path::Path,
    subject: Vec<u8>,
    spki: &[u8],
    attributes: &[Vec<u8>],
) -> Vec<u8> {
    csr_der_v(key, 0, subject, spki, attributes)
}

/// [`csr_der`] with PKCS#10 version `version` (0 is the only one defined).
fn csr_der_v(
    key: &std::path::Path,
    version: u8,
    subject: Vec<u8>,
    spki: &[u8],
    attributes: &[Vec<u8>],
) -> Vec<u8> {
    let info = seq(&[
        vec![0x02, 0x01, version],
        subject,
        spki.to_vec(),
        der(0xa0, &cat(attributes)),
    ]);
    let tbs = key.with_extension(format!("tbs{}", rand_suffix()));
    std::fs::write(&tbs, &info).unwrap();
    let sig = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&tbs)
        .output()
        .unwrap();
    assert!(
        sig.status.success(),
        "{}",
        String::from_utf8_lossy(&sig.stderr)
    );
    let mut bits = vec![0u8];
    bits.extend(sig.stdout);
    seq(&[info, ECDSA_SHA256.to_vec(), der(0x03, &bits)])
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn csr_pem(der: &[u8]) -> String {
    pem("CERTIFICATE REQUEST", der)
}

/// The signed certificate's DNS names, IPs, URIs and emails, as strings.
fn sans_of(cert_pem: &str) -> Vec<String> {
    let der = pem_der(cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let mut out = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            out.push(format!("{n:?}"));
        }
    }
    out.push(format!("subject={}", cert.subject()));
    out
}

const CN: &str = "gw.payments.example";

// ---------------------------------------------------------------------------------------

/// Attack: two extensionRequest attributes. x509-parser's `requested_extensions()` looks at the
/// FIRST only (`find_map`), so `pem::csr::check` sees an empty request; Go's
/// `x509.ParseCertificateRequest` (OpenBao) appends the extensions of every extensionRequest
/// attribute, and the role's `use_csr_sans` (default true) puts the second one's names in the
/// certificate. The certificate check on the way back looks at the key, CN and CA flag only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_second_extension_request_smuggles_names() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let smuggled = ext_req(&[ext(
        OID_SAN,
        false,
        san(&[
            Gn::Dns(CN),
            Gn::Dns("admin.payments.example"),
            Gn::Dns("*.payments.example"),
            Gn::Ip([10, 0, 0, 1]),
        ]),
    )]);
    let csr = csr_pem(&csr_der(
        &key,
        cn_name(CN),
        &spki,
        &[ext_req(&[]), smuggled],
    ));
    let (status, body) = sign(&s, GW, "partner-sign", &csr).await;
    let sans = if status == 200 {
        sans_of(body["certificate"].as_str().unwrap())
    } else {
        vec![]
    };
    eprintln!(
        "status {status} body {body}\nSANs: {sans:?}\nOpenBao signed {}",
        signed_count(&bao_audit)
    );
    assert_ne!(
        status, 200,
        "signed a certificate with names the profile does not give: {sans:?}"
    ); // Refused by the CSR check, before OpenBao was asked.
    assert_eq!(signed_count(&bao_audit), 0, "OpenBao signed it");
}

/// Attack: the text checked is not the text signed. `check` skips every line before the first
/// one starting `-----BEGIN ` (x509-parser's PEM reader), but sends `text.trim()` to OpenBao;
/// a leading space hides a first PEM block from the check, and Go's `pem.Decode` takes that
/// block after the trim. The hidden CSR carries the same key and CN, and any names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_leading_space_hides_the_csr_openbao_signs() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let evil = csr_pem(&csr_der(
        &key,
        cn_name(CN),
        &spki,
        &[ext_req(&[
            ext(
                OID_SAN,
                false,
                san(&[Gn::Dns("admin.payments.example"), Gn::Ip([10, 0, 0, 2])]),
            ),
            ext(OID_BC, true, seq(&[vec![0x01, 0x01, 0xff]])),
        ])],
    ));
    let good = csr_pem(&csr_der(&key, cn_name(CN), &spki, &[]));
    let text = format!(" {evil}{good}");
    let (status, body) = sign(&s, GW, "partner-sign", &text).await;
    let sans = if status == 200 {
        sans_of(body["certificate"].as_str().unwrap())
    } else {
        vec![]
    };
    eprintln!(
        "status {status} body {body}\nSANs: {sans:?}\nOpenBao signed {}",
        signed_count(&bao_audit)
    );
    assert_ne!(status, 200, "OpenBao signed the hidden CSR: {sans:?}");
    assert_eq!(signed_count(&bao_audit), 0, "OpenBao signed it");
}

/// Variants of the hidden block: a Unicode space (trim() removes it too) and a CN the
/// profile does not give — the latter comes back refused (503) but is it signed in OpenBao?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_hidden_csr_for_another_name_is_signed_in_openbao_even_when_refused() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let evil = csr_pem(&csr_der(
        &key,
        cn_name("admin.payments.example"),
        &spki,
        &[],
    ));
    let good = csr_pem(&csr_der(&key, cn_name(CN), &spki, &[]));
    let text = format!("\u{2028}{evil}{good}");
    let (status, body) = sign(&s, GW, "partner-sign", &text).await;
    eprintln!(
        "status {status} body {body}\nOpenBao signed {}",
        signed_count(&bao_audit)
    );
    assert_eq!(
        signed_count(&bao_audit),
        0,
        "OpenBao signed a certificate for admin.payments.example (answer {status} {body})"
    );
}

/// What held: each refused with its code, nothing signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_odd_csrs_are_refused_before_openbao() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let good_der = csr_der(&key, cn_name(CN), &spki, &[]);
    let with_san = |names: &[Gn<'_>]| {
        csr_pem(&csr_der(
            &key,
            cn_name(CN),
            &spki,
            &[ext_req(&[ext(OID_SAN, false, san(names))])],
        ))
    };
    let with_subject = |subject: Vec<u8>| csr_pem(&csr_der(&key, subject, &spki, &[]));
    let upn = vec![
        0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x14, 0x02, 0x03,
    ];
    let mut trailing = good_der.clone();
    trailing.extend([0x05, 0x00]);
    // BER: the outer SEQUENCE with an indefinite length.
    let mut ber = vec![0x30, 0x80];
    let hdr_len = if good_der[1] & 0x80 != 0 {
        2 + (good_der[1] & 0x7f) as usize
    } else {
        2
    };
    ber.extend_from_slice(&good_der[hdr_len..]);
    ber.extend([0, 0]);
    let good_pem = csr_pem(&good_der);
    let crlf = good_pem.replace('\n', "\r\n");
    let with_header = good_pem.replacen("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1);
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "ip san",
            "csr_name_not_allowed",
            with_san(&[Gn::Ip([10, 0, 0, 1])]),
        ),
        (
            "uri san",
            "csr_name_not_allowed",
            with_san(&[Gn::Uri("spiffe://payments/admin")]),
        ),
        (
            "email san",
            "csr_name_not_allowed",
            with_san(&[Gn::Email("admin@payments.example")]),
        ),
        (
            "otherName upn",
            "csr_name_not_allowed",
            with_san(&[Gn::Other(upn, utf8("admin@payments.example"))]),
        ),
        (
            "dns + ip",
            "csr_name_not_allowed",
            with_san(&[Gn::Dns(CN), Gn::Ip([10, 0, 0, 1])]),
        ),
        (
            "dns other case",
            "csr_name_not_allowed",
            with_san(&[Gn::Dns("GW.payments.example")]),
        ),
        (
            "cn trailing dot",
            "csr_name_not_allowed",
            with_subject(cn_name("gw.payments.example.")),
        ),
        (
            "cn upper case",
            "csr_name_not_allowed",
            with_subject(cn_name("GW.PAYMENTS.EXAMPLE")),
        ),
        (
            "cn with NUL",
            "csr_name_not_allowed",
            with_subject(cn_name("gw.payments.example\0.evil")),
        ),
        (
            "two CN in one RDN",
            "csr_name_not_allowed",
            with_subject(seq(&[set(&[
                atv(OID_CN, utf8(CN)),
                atv(OID_CN, utf8("admin.payments.example")),
            ])])),
        ),
        (
            "two CN RDNs",
            "csr_name_not_allowed",
            with_subject(name(&[
                atv(OID_CN, utf8(CN)),
                atv(OID_CN, utf8("admin.payments.example")),
            ])),
        ),
        (
            "CN as BMPString",
            "csr_name_not_allowed",
            with_subject(name(&[atv(
                OID_CN,
                der(
                    0x1e,
                    &CN.encode_utf16()
                        .flat_map(|u| u.to_be_bytes())
                        .collect::<Vec<_>>(),
                ),
            )])),
        ),
        (
            "unknown critical extension",
            "csr_extension_not_allowed",
            csr_pem(&csr_der(
                &key,
                cn_name(CN),
                &spki,
                &[ext_req(&[ext(
                    &[0x06, 0x03, 0x2a, 0x03, 0x04],
                    true,
                    vec![0x05, 0x00],
                )])],
            )),
        ),
        (
            "SAN twice in one request (2nd evil)",
            "csr_extension_not_allowed",
            csr_pem(&csr_der(
                &key,
                cn_name(CN),
                &spki,
                &[ext_req(&[
                    ext(OID_SAN, false, san(&[Gn::Dns(CN)])),
                    ext(OID_SAN, false, san(&[Gn::Dns("admin.payments.example")])),
                ])],
            )),
        ),
        ("trailing DER", "not_a_csr", csr_pem(&trailing)),
        ("BER indefinite", "not_a_csr", csr_pem(&ber)),
        ("PEM header", "not_a_csr", with_header),
        (
            "a CERTIFICATE label",
            "not_a_csr",
            pem("CERTIFICATE", &good_der),
        ),
        ("two blocks", "not_a_csr", format!("{good_pem}{good_pem}")),
        ("garbage after", "not_a_csr", format!("{good_pem}x")),
    ];
    let mut wrong = vec![];
    for (what, code, csr) in &cases {
        let (status, body) = sign(&s, GW, "partner-sign", csr).await;
        let got = body["error"]["code"].as_str().unwrap_or("").to_owned();
        eprintln!("{what}: {status} {got}");
        if status != 400 || got != *code {
            wrong.push(format!("{what}: {status} {body}"));
        }
    }
    // No second certificate for a next period: OpenBao cannot date one's start ahead, so it
    // would be a second live certificate (docs/PKI.md).
    let (status, body) = sign_with(
        &s,
        GW,
        "partner-sign",
        json!({ "csr": good_pem, "host": "api.partner.example", "include_next": true }),
    )
    .await;
    if status != 400 || body["error"]["code"] != "invalid_body" {
        wrong.push(format!("include_next: {status} {body}"));
    }
    assert_eq!(signed_count(&bao_audit), 0, "something was signed");
    // CRLF is just a PEM: accepted (one budget unit).
    let (status, body) = sign(&s, GW, "partner-sign", &crlf).await;
    eprintln!("crlf: {status} {body}");
    // Extra subject attributes and a challengePassword pass the check; does OpenBao copy them?
    let extra = csr_pem(&csr_der(
        &key,
        name(&[atv(OID_O, utf8("Evil Corp")), atv(OID_CN, utf8(CN))]),
        &spki,
        &[seq(&[OID_CHALLENGE.to_vec(), set(&[utf8("s3cret")])])],
    ));
    let (status2, body2) = sign(&s, GW, "partner-sign", &extra).await;
    let subject = if status2 == 200 {
        sans_of(body2["certificate"].as_str().unwrap())
    } else {
        vec![]
    };
    eprintln!("extra subject + challengePassword: {status2} {body2} {subject:?}");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!audit.contains("s3cret"));
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(subject.iter().all(|s| !s.contains("Evil")), "{subject:?}");
}

/// Racing the budget: 16 concurrent signs by one consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_racing_the_budget() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let csr = csr_pem(&csr_der(&key, cn_name(CN), &spki, &[]));
    let s = std::sync::Arc::new(s);
    let mut tasks = vec![];
    for _ in 0..16 {
        let s = s.clone();
        let csr = csr.clone();
        tasks.push(tokio::spawn(async move {
            sign(&s, GW, "partner-sign", &csr).await.0
        }));
    }
    let mut codes = vec![];
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    eprintln!(
        "codes {codes:?}; OpenBao signed {}",
        signed_count(&bao_audit)
    );
    assert_eq!(ok, 2);
    assert_eq!(signed_count(&bao_audit), 2);
    // Another consumer of the team is not charged for it.
    let (status, body) = sign(&s, OPS, "partner-sign", &csr).await;
    eprintln!("ops after gw's budget: {status} {body}");
}

/// A refused-by-OpenBao CSR costs budget: a compressed point passes the check
/// (ring/aws-lc verify it) but Go cannot parse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_compressed_point_and_budget() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, _) = p256_key(work.path(), "k");
    let comp = std::process::Command::new("openssl")
        .args([
            "ec",
            "-pubout",
            "-outform",
            "DER",
            "-conv_form",
            "compressed",
            "-in",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(comp.status.success());
    let csr = csr_pem(&csr_der(&key, cn_name(CN), &comp.stdout, &[]));
    for i in 0..3 {
        let (status, body) = sign(&s, GW, "partner-sign", &csr).await;
        eprintln!("compressed #{i}: {status} {body}");
    }
    eprintln!(
        "OpenBao asked {} signed {}",
        requested(&bao_audit, "pki/sign/signer"),
        signed_count(&bao_audit)
    );
    // Another team, existence oracle: a bad CSR and no CSR.
    let (a, ab) = sign(&s, INTRUDER, "partner-sign", "junk").await;
    let (b, bb) = sign(&s, INTRUDER, "no-such", "junk").await;
    eprintln!("intruder: {a} {ab} / {b} {bb}");
    assert_eq!((a, &ab), (b, &bb));
    // No host: is allowed_hosts bypassed?
    let (h, hb) = sign_with(&s, GW, "partner-pki", json!({ "csr": "junk" })).await;
    eprintln!("no host, issuing credential: {h} {hb}");
    let (h2, hb2) = sign_with(
        &s,
        GW,
        "partner-sign",
        json!({ "csr": "junk", "host": "evil.example" }),
    )
    .await;
    eprintln!("wrong host: {h2} {hb2}");
    let (h3, hb3) = sign_with(
        &s,
        GW,
        "partner-sign",
        json!({ "csr": "junk", "host": "API.PARTNER.EXAMPLE." }),
    )
    .await;
    eprintln!("odd host: {h3} {hb3}");
    // Huge body.
    let big = "A".repeat(5 * 1024 * 1024);
    let huge = s
        .client
        .post(s.url("/v1/credentials/partner-sign/sign"))
        .bearer_auth(GW)
        .json(&json!({ "csr": big }))
        .send()
        .await;
    eprintln!("huge: {:?}", huge.map(|r| r.status()));
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    eprintln!(
        "server log lines mentioning sign:\n{}",
        stderr
            .lines()
            .filter(|l| l.contains("sign"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The egress proxy: a signing credential named, and no name where two credentials fit the
/// host — both refused and audited (credential.material, door egress).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_egress_refusals_are_audited() {
    let (bao, _bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (dir, s) = serve(
        &bao,
        "[egress]\nlisten = \"127.0.0.1:0\"\nresolve = { \"api.partner.example\" = \"127.0.0.1\" }\n",
    )
    .await;
    let proxy = format!("http://127.0.0.1:{}", s.port_of("egress"));
    let curl = |extra: &[&str]| {
        let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", &proxy];
        let auth = format!("Proxy-Authorization: Bearer {GW}");
        args.extend(["-H", &auth]);
        args.extend_from_slice(extra);
        args.push("http://api.partner.example:9/");
        let out = std::process::Command::new("curl")
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let named_sign = curl(&["-H", "Keybroker-Credential: partner-sign"]);
    let none = curl(&[]);
    let bad_header = curl(&["-H", "Keybroker-Credential: Partner Sign"]);
    let intruder = {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                &proxy,
                "-H",
                &format!("Proxy-Authorization: Bearer {INTRUDER}"),
                "-H",
                "Keybroker-Credential: partner-sign",
                "http://api.partner.example:9/",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let lines: Vec<&str> = audit.lines().filter(|l| l.contains("egress")).collect();
    eprintln!(
        "named signing: {named_sign}, none: {none}, bad header: {bad_header}, intruder: {intruder}\n{}",
        lines.join("\n")
    );
    assert!(lines.len() >= 3, "{audit}");
}

/// Nameless CSRs (THREATS row 88) that smuggle names or powers: an empty subject beside an
/// attribute (a challengePassword, an empty extension request, one asking for a CA, key usages,
/// name constraints or another team's DNS name, IP, URI or email), subjects empty in odd DER
/// (an empty RDN, an empty AttributeTypeAndValue, a zero-length CN), PKCS#10 version 1,
/// trailing data, two blocks, a signature over other bytes — all refused before OpenBao is
/// asked. Then a true nameless CSR is signed with the profile's name only, and another team's
/// consumer sending one gets the missing credential's answer, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_nameless_csrs_that_smuggle_names_or_powers_are_refused() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (key, spki) = p256_key(work.path(), "k");
    let empty = || seq(&[]);
    let with_attrs = |attrs: &[Vec<u8>]| csr_pem(&csr_der(&key, empty(), &spki, attrs));
    let ext_only = |e: Vec<u8>| with_attrs(&[ext_req(&[e])]);
    const OID_KU: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0f];
    const OID_NC: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x1e];
    let nameless_der = csr_der(&key, empty(), &spki, &[]);
    let mut trailing = nameless_der.clone();
    trailing.extend([0x05, 0x00]);
    let nameless = csr_pem(&nameless_der);
    // The signature over other bytes: the info with a CN, the signature of the nameless one.
    let forged = {
        let named = csr_der(&key, cn_name("admin.payments.example"), &spki, &[]);
        let (_, n) = X509CertificationRequest::from_der(&named).unwrap();
        let (_, e) = X509CertificationRequest::from_der(&nameless_der).unwrap();
        let mut bits = vec![0u8];
        bits.extend_from_slice(&e.signature_value.data);
        csr_pem(&seq(&[
            n.certification_request_info.raw.to_vec(),
            ECDSA_SHA256.to_vec(),
            der(0x03, &bits),
        ]))
    };
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "challengePassword",
            "csr_name_not_allowed",
            with_attrs(&[seq(&[OID_CHALLENGE.to_vec(), set(&[utf8("pw")])])]),
        ),
        (
            "empty extension request",
            "csr_name_not_allowed",
            with_attrs(&[ext_req(&[])]),
        ),
        (
            "empty attribute set",
            "not_a_csr",
            with_attrs(&[seq(&[OID_EXT_REQ.to_vec(), set(&[])])]),
        ),
        (
            "basicConstraints CA",
            "csr_name_not_allowed",
            ext_only(ext(OID_BC, true, seq(&[vec![0x01, 0x01, 0xff]]))),
        ),
        (
            "keyUsage keyCertSign",
            "csr_name_not_allowed",
            ext_only(ext(OID_KU, true, vec![0x03, 0x02, 0x02, 0x04])),
        ),
        (
            "nameConstraints",
            "csr_name_not_allowed",
            ext_only(ext(
                OID_NC,
                true,
                seq(&[der(0xa0, &seq(&[der(0x82, b"payments.example")]))]),
            )),
        ),
        (
            "another team's DNS",
            "csr_name_not_allowed",
            ext_only(ext(OID_SAN, false, san(&[Gn::Dns("gw.fraud.example")]))),
        ),
        (
            "the profile's DNS only",
            "csr_name_not_allowed",
            ext_only(ext(OID_SAN, false, san(&[Gn::Dns(CN)]))),
        ),
        (
            "an IP",
            "csr_name_not_allowed",
            ext_only(ext(OID_SAN, false, san(&[Gn::Ip([10, 0, 0, 1])]))),
        ),
        (
            "a URI",
            "csr_name_not_allowed",
            ext_only(ext(
                OID_SAN,
                false,
                san(&[Gn::Uri("spiffe://fraud.example/gw")]),
            )),
        ),
        (
            "an email",
            "csr_name_not_allowed",
            ext_only(ext(
                OID_SAN,
                false,
                san(&[Gn::Email("admin@fraud.example")]),
            )),
        ),
        (
            "an empty RDN",
            "not_a_csr",
            csr_pem(&csr_der(&key, seq(&[set(&[])]), &spki, &[])),
        ),
        (
            "an empty AttributeTypeAndValue",
            "not_a_csr",
            csr_pem(&csr_der(&key, seq(&[set(&[seq(&[])])]), &spki, &[])),
        ),
        (
            "the CN beside an empty RDN",
            "not_a_csr",
            csr_pem(&csr_der(
                &key,
                seq(&[set(&[atv(OID_CN, utf8(CN))]), set(&[])]),
                &spki,
                &[],
            )),
        ),
        (
            "the CN beside an empty AttributeTypeAndValue",
            "not_a_csr",
            csr_pem(&csr_der(
                &key,
                seq(&[set(&[atv(OID_CN, utf8(CN))]), set(&[seq(&[])])]),
                &spki,
                &[],
            )),
        ),
        (
            "the subject as a long-form empty SEQUENCE",
            "not_a_csr",
            csr_pem(&csr_der(&key, vec![0x30, 0x81, 0x00], &spki, &[])),
        ),
        (
            "a zero-length CN",
            "csr_name_not_allowed",
            csr_pem(&csr_der(&key, cn_name(""), &spki, &[])),
        ),
        (
            "version 1",
            "not_a_csr",
            csr_pem(&csr_der_v(&key, 1, empty(), &spki, &[])),
        ),
        ("trailing DER", "not_a_csr", csr_pem(&trailing)),
        ("two blocks", "not_a_csr", format!("{nameless}{nameless}")),
        ("signature over other bytes", "csr_bad_signature", forged),
    ];
    let mut wrong = vec![];
    for (what, code, csr) in &cases {
        let (status, body) = sign(&s, GW, "partner-sign", csr).await;
        let got = body["error"]["code"].as_str().unwrap_or("").to_owned();
        eprintln!("{what}: {status} {got}");
        if status != 400 || got != *code {
            wrong.push(format!("{what}: {status} {body}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        requested(&bao_audit, "pki/sign/signer"),
        0,
        "OpenBao was asked"
    );
    // Another team's consumer: the missing credential's answer, and no signature.
    let (a, ab) = sign(&s, INTRUDER, "partner-sign", &nameless).await;
    let (b, bb) = sign(&s, INTRUDER, "no-such-credential", &nameless).await;
    eprintln!("intruder: {a} {ab} / {b} {bb}");
    assert_eq!((a, &ab), (b, &bb));
    assert_eq!((a, ab["error"]["code"].as_str()), (403, Some("denied")));
    assert_eq!(signed_count(&bao_audit), 0);
    // The true nameless CSR: the profile's name, nothing else, no CA.
    let (status, body) = sign(&s, GW, "partner-sign", &nameless).await;
    assert_eq!(status, 200, "{body}");
    let der = pem_der(body["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let cns: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cns, [CN]);
    assert!(!cert.is_ca());
    assert_eq!(cert.public_key().raw, spki.as_slice());
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for n in &sans.value.general_names {
            assert!(matches!(n, GeneralName::DNSName(d) if *d == CN), "{n:?}");
        }
    }
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let refused: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("credential.sign") && l.contains("intruder"))
        .collect();
    eprintln!("{refused:#?}");
    assert_eq!(refused.len(), 2, "{audit}");
}

/// THREATS row 89: another team's signing credential on a profile whose name is a
/// consumer's identity. Reproduced end to end before the check: team `other`'s consumer sent
/// a nameless CSR to `other-sign` (profile CN `gw.payments.example`) and the certificate
/// OpenBao signed authenticated at the main API as payments' `gw-cert` (`issuer_ca` = the PKI
/// CA + `subject = CN=gw.payments.example`). Now the configuration is refused at load when
/// the name is in payments' `identity_domains` (exit 2, nothing served), and warned about
/// when it is only a CN payments' ACL matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_naming_another_teams_identity_is_refused_at_load() {
    let (bao, _bao_audit, _a) = audited_bao();
    let pki_ca = pki_mount(&bao);
    let check = |domains: &str| {
        let (dir, ca) = folder("unused");
        let root = dir.path();
        fixture::Policy::new()
            .team("payments")
            .and(domains)
            .and("[[consumer]]\nname = \"gw-cert\"\nteam = \"payments\"\nissuer_ca = \"pki-ca.pem\"\nsubject = \"CN=gw.payments.example\"")
            .team("other")
            .consumer("intruder", "other", INTRUDER)
            .and("[[credential]]\nname = \"other-sign\"\nmode = \"mtls\"\nteam = \"other\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:gateway-sign $KEY_certificate\"")
            .write(root);
        std::fs::write(root.join("policies/pki-ca.pem"), &pki_ca).unwrap();
        std::fs::write(root.join("pki-ca.pem"), &pki_ca).unwrap();
        fixture::Config::tls()
            .with("client_ca = \"pki-ca.pem\"\nclient_auth = \"optional\"")
            .with(&format!(
                "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.gateway-sign]\nrole = \"signer\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\nissue = \"sign\"\nkey_type = \"ec\"\n",
                bao.addr
            ))
            .write(root);
        std::fs::write(root.join("server-ca.pem"), &ca.pem).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["check", "--config", "kb.toml"])
            .env("VAULT_TOKEN", support::openbao::ROOT_TOKEN)
            .current_dir(root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{domains}: {:?}\n{err}", out.status.code());
        (out.status.code(), err)
    };
    let (code, err) = check("identity_domains = [\"payments.example\"]");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("identity_domains of team `payments`")
            && err.contains("team `other` would hold its identity"),
        "{err}"
    );
    let (code, err) = check("");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("consumer `gw-cert` of team `payments`")
            && err.contains("team `other` would hold that identity"),
        "{err}"
    );
}

/// The budget is the caller's, per profile and period, whatever its CSRs are: nameless or
/// named, P-256 or P-384, the third signature is refused and OpenBao signs two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_the_budget_does_not_care_for_key_types_or_names() {
    let (bao, bao_audit, _a) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao, "").await;
    let work = tempfile::tempdir().unwrap();
    let (k256, spki256) = p256_key(work.path(), "k256");
    let k384 = work.path().join("k384.key");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
        ])
        .arg(&k384)
        .output()
        .unwrap();
    assert!(made.status.success());
    let spki384 = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&k384)
        .output()
        .unwrap()
        .stdout;
    let csrs = [
        csr_pem(&csr_der(&k256, seq(&[]), &spki256, &[])),
        csr_pem(&csr_der(&k384, cn_name(CN), &spki384, &[])),
        csr_pem(&csr_der(&k384, seq(&[]), &spki384, &[])),
        csr_pem(&csr_der(&k256, cn_name(CN), &spki256, &[])),
    ];
    let mut got = vec![];
    for csr in &csrs {
        let (status, body) = sign(&s, GW, "partner-sign", csr).await;
        got.push((status, body["error"]["code"].as_str().map(str::to_owned)));
    }
    eprintln!("{got:?}");
    assert_eq!(
        got,
        [
            (200, None),
            (200, None),
            (429, Some("sign_budget_exhausted".to_owned())),
            (429, Some("sign_budget_exhausted".to_owned())),
        ]
    );
    assert_eq!(signed_count(&bao_audit), 2);
}
