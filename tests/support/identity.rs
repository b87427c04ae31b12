//! The world of the identity-renewal tests (`tests/pki_identity.rs`,
//! `tests/pki_identity_attacks.rs`): its tokens, OpenBao's identity role, the certificates the
//! operator hands out first, and the good policy.
#![allow(dead_code)]

use serde_json::Value;

use super::fixture;
use super::openbao::OpenBao;
use super::pki_bao::pem_der;

pub const GW: &str = "identity-gw-token";
pub const ADMIN: &str = "identity-admin-token";
pub const OTHER_ADMIN: &str = "identity-other-admin-token";
pub const CN: &str = "agent.payments.example";
pub const PROFILE_LINE: &str = "identity_profile = \"agent-id\"";

/// A role for the agents' identities (its own: OpenBao's audit log counts its signatures).
pub fn identity_role(bao: &OpenBao) {
    bao.cli(&[
        "write",
        "pki/roles/ident",
        "allowed_domains=payments.example",
        "allow_subdomains=true",
        "client_flag=true",
        "server_flag=false",
        "max_ttl=2h",
        "key_type=ec",
        "key_bits=256",
    ]);
}

/// A certificate and key issued by OpenBao's role `role` (PEM): what the operator hands an
/// agent first.
pub fn issued(bao: &OpenBao, role: &str, cn: &str, ttl: &str) -> (String, String) {
    let out = bao.cli(&[
        "write",
        "-format=json",
        &format!("pki/issue/{role}"),
        &format!("common_name={cn}"),
        &format!("ttl={ttl}"),
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["data"]["certificate"].as_str().unwrap().to_owned(),
        v["data"]["private_key"].as_str().unwrap().to_owned(),
    )
}

/// The hex SHA-256 of the certificate in `pem`: its pin.
pub fn fingerprint(pem: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(pem_der(pem)))
}

/// The good policy: `agent` (pinned, with the identity profile), `plain` (pinned, none),
/// token consumers, a team admin of `other`, a global admin, and a text credential.
pub fn good_policy(agent_fp: &str, plain_fp: &str) -> String {
    fixture::Policy::new()
        .team("payments")
        .team("other")
        .consumer("gw", "payments", GW)
        .consumer("root-admin", "other", ADMIN)
        .and("admin = true")
        .team_admin("other-admin", "other", OTHER_ADMIN, &["other"])
        .and(&format!("[[consumer]]\nname = \"agent\"\nteam = \"payments\"\n{PROFILE_LINE}\ncert_sha256 = [{{ fingerprint = \"{agent_fp}\" }}]"))
        .and(&format!("[[consumer]]\nname = \"plain\"\nteam = \"payments\"\ncert_sha256 = [{{ fingerprint = \"{plain_fp}\" }}]"))
        .grant("payments", "files", &["app/*"], &["api.partner.example"])
        .and("[[credential]]\nname = \"app-token\"\nteam = \"payments\"\nmode = \"text\"\nallowed_hosts = [\"api.partner.example\"]\nvalue = \"$SECRET_files:app/token $KEY_value\"")
        .into_text()
}
