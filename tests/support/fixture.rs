//! Builders for the policy and configuration files the tests write, instead of hand-written
//! TOML in each test: a team, a consumer, a credential, a grant, a source in one call each.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::Path;

/// A policy file under construction.
#[derive(Default)]
pub struct Policy(String);

impl Policy {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn team(mut self, slug: &str) -> Self {
        let _ = write!(self.0, "[[team]]\nslug = \"{slug}\"\n");
        self
    }

    /// A team with its Tines ID.
    pub fn tines_team(mut self, slug: &str, tines_id: u64) -> Self {
        let _ = write!(
            self.0,
            "[[team]]\nslug = \"{slug}\"\ntines_id = {tines_id}\n"
        );
        self
    }

    /// A consumer authenticated by the bearer token `token`.
    pub fn consumer(mut self, name: &str, team: &str, token: &str) -> Self {
        let _ = write!(
            self.0,
            "[[consumer]]\nname = \"{name}\"\nteam = \"{team}\"\ntoken_sha256 = \"{}\"\n",
            super::server::token_sha256(token)
        );
        self
    }

    /// A line added to the last entry (e.g. `admin = true`, `vault_api_host = "…"`).
    pub fn and(mut self, line: &str) -> Self {
        self.0.push_str(line);
        self.0.push('\n');
        self
    }

    /// A consumer that administers `teams` through the management API.
    pub fn team_admin(mut self, name: &str, team: &str, token: &str, teams: &[&str]) -> Self {
        self = self.consumer(name, team, token);
        let _ = writeln!(self.0, "admin_teams = {teams:?}");
        self
    }

    /// An mtls credential whose values are the fields `cert`, `key` and `ca` of the secret
    /// `source:path`.
    pub fn mtls(mut self, name: &str, team: &str, hosts: &[&str], secret: &str) -> Self {
        let _ = write!(
            self.0,
            "[[credential]]\nname = \"{name}\"\nmode = \"mtls\"\nteam = \"{team}\"\nallowed_hosts = {hosts:?}\nclient_certificate = \"$SECRET_{secret} $KEY_cert\"\nclient_private_key = \"$SECRET_{secret} $KEY_key\"\nroot_certificate = \"$SECRET_{secret} $KEY_ca\"\n"
        );
        self
    }

    pub fn grant(mut self, team: &str, source: &str, paths: &[&str], hosts: &[&str]) -> Self {
        let _ = write!(
            self.0,
            "[[grant]]\nteam = \"{team}\"\nsource = \"{source}\"\npaths = {paths:?}\nallowed_hosts = {hosts:?}\n"
        );
        self
    }

    /// The policy's text.
    pub fn into_text(self) -> String {
        self.0
    }

    /// Writes `policies/p.toml` under `root`.
    pub fn write(self, root: &Path) {
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/p.toml"), self.0).unwrap();
    }
}

/// A `kb.toml` for `serve` in a `support::server::folder`: TLS on port 0 with the folder's
/// server certificate, the policy folder, and what is added.
pub struct Config(String);

impl Config {
    pub fn tls() -> Self {
        Self(
            "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n"
                .to_owned(),
        )
    }

    /// The file source `name` over the folder `path`.
    pub fn files(mut self, name: &str, path: &str) -> Self {
        let _ = write!(
            self.0,
            "[[source]]\nname = \"{name}\"\nkind = \"file\"\npath = \"{path}\"\n"
        );
        self
    }

    /// An audit trail in `audit.log`.
    pub fn audit(mut self) -> Self {
        self.0.push_str("[audit]\npath = \"audit.log\"\n");
        self
    }

    /// A section (or anything else) as written.
    pub fn with(mut self, toml: &str) -> Self {
        self.0.push_str(toml);
        if !toml.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }

    /// Writes `kb.toml` under `root`.
    pub fn write(self, root: &Path) {
        std::fs::write(root.join("kb.toml"), self.0).unwrap();
    }
}
