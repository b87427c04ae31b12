//! OpenBao with a PKI mount and its own audit log, and the calls the PKI tests make of
//! keybroker (`tests/pki.rs`, `tests/pki_sign_attacks.rs`).
#![allow(dead_code)]

use serde_json::{Value, json};

use super::openbao::OpenBao;
use super::server::Running;

pub fn pem_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

/// OpenBao with a PKI mount: a root CA (returned, PEM) and a role for client certificates.
pub fn pki_mount(bao: &OpenBao) -> String {
    bao.cli(&["secrets", "enable", "pki"]);
    bao.cli(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
    let ca = bao.cli(&[
        "write",
        "-field=certificate",
        "pki/root/generate/internal",
        "common_name=keybroker test PKI root",
        "ttl=87600h",
    ]);
    bao.cli(&[
        "write",
        "pki/roles/gateway",
        "allowed_domains=payments.example",
        "allow_subdomains=true",
        "client_flag=true",
        "server_flag=false",
        "max_ttl=2h",
        "key_type=ec",
        "key_bits=256",
    ]);
    // The role the signing profile uses (its own, so OpenBao's audit log tells its `sign` and
    // `issue` apart from the other profiles').
    bao.cli(&[
        "write",
        "pki/roles/signer",
        "allowed_domains=payments.example",
        "allow_subdomains=true",
        "client_flag=true",
        "server_flag=false",
        "max_ttl=2h",
        "key_type=ec",
        "key_bits=256",
    ]);
    bao.cli(&[
        "write",
        "pki/roles/fast",
        "allowed_domains=payments.example",
        "allow_subdomains=true",
        "client_flag=true",
        "server_flag=false",
        "max_ttl=1h",
        "key_type=ec",
        "key_bits=256",
    ]);
    ca
}

/// Requests to `path` OpenBao answered with a certificate (a response carrying a serial), from
/// its own audit log.
pub fn answered(audit: &std::path::Path, path: &str) -> usize {
    let path = format!("\"path\":\"{path}\"");
    String::from_utf8_lossy(&std::fs::read(audit).unwrap())
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"response\"")
                && l.contains(&path)
                && l.contains("\"serial_number\"")
        })
        .count()
}

/// OpenBao with its own audit log, which counts the issuances (audit devices are declared in
/// its configuration, not enabled through the API): the server, the log's path, its folder.
pub fn audited_bao() -> (OpenBao, std::path::PathBuf, tempfile::TempDir) {
    let audit_dir = tempfile::tempdir().unwrap();
    let bao_audit = audit_dir.path().join("bao-audit.log");
    let hcl = audit_dir.path().join("audit.hcl");
    std::fs::write(
        &hcl,
        format!(
            "audit \"file\" \"to-file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            bao_audit.display().to_string()
        ),
    )
    .unwrap();
    (OpenBao::start_with_config(Some(&hcl)), bao_audit, audit_dir)
}

pub async fn sign(s: &Running, token: &str, name: &str, csr: &str) -> (u16, Value) {
    let resp = s
        .client
        .post(s.url(&format!("/v1/credentials/{name}/sign")))
        .bearer_auth(token)
        .json(&json!({ "csr": csr, "host": "api.partner.example" }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Signatures OpenBao answered for the signing profile's role, from its own audit log.
pub fn signed_count(audit: &std::path::Path) -> usize {
    answered(audit, "pki/sign/signer")
}
