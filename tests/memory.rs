//! shared/THREATS.md row 13: after secrets were handed out and the cache purged, the server
//! process's memory holds no copy of them. The real binary serves material over TLS; then
//! every writable mapping of the process is read through /proc/<pid>/mem and searched.

#![cfg(target_os = "linux")]

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod server;
}

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use serde_json::json;

/// How many places in the process's writable memory hold `needle`.
fn occurrences(pid: u32, needle: &[u8]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let name = parts.nth(3).unwrap_or("[anon]");
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (i, w) in buf.windows(needle.len()).enumerate() {
            if w == needle {
                found.push(format!("{name}+{:#x}", i));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn handed_out_secrets_do_not_stay_in_the_process_after_purge() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Fresh canaries per run: they exist nowhere but in the secret stores and what the
    // server makes of them. With a newline, as PEM has: JSON escapes take serde_json's
    // scratch-buffer path (serde-rs/json#1093).
    let fresh = |tag: &str| {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).unwrap();
        format!("{tag}-{}\nsecond line", hex::encode(raw))
    };
    let file_canary = fresh("FILECANARY");
    let vault_canary = fresh("VAULTCANARY");

    let bao = support::openbao::OpenBao::start();
    bao.cli(&[
        "kv",
        "put",
        "secret/app/token",
        &format!("value={vault_canary}"),
    ]);
    let (dir, ca) = support::server::folder(&file_canary);
    let root = dir.path();
    let sha = support::server::token_sha256;
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"gw\"\nteam = \"t\"\ntoken_sha256 = \"{}\"\nadmin = true\n\
             [[credential]]\nname = \"from-vault\"\nmode = \"text\"\nteam = \"t\"\nallowed_hosts = [\"api.example\"]\nvalue = \"$SECRET_vault:app/token $KEY_value\"\n\
             [[credential]]\nname = \"from-file\"\nmode = \"text\"\nteam = \"t\"\nallowed_hosts = [\"api.example\"]\nvalue = \"$SECRET_files:app/token $KEY_value\"\n",
            sha("gw-token")
        ),
    )
    .unwrap();
    let port = support::openbao::free_port();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\ndefault_source = \"files\"\n[server]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[cache]\nttl = \"1h\"\n", bao.addr
        ),
    )
    .unwrap();
    let mut running = support::server::Running::start(root, &ca.pem, port, "warn").await;
    let pid = running.pid();
    let client = running.client.clone();
    let url = |path: &str| running.url(path);

    let credentials = [("from-file", &file_canary), ("from-vault", &vault_canary)];
    for _ in 0..20 {
        for (name, canary) in credentials {
            let body = client
                .post(url(&format!("/v1/credentials/{name}/material")))
                .bearer_auth("gw-token")
                .json(&json!({"host": "api.example"}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["value"], canary.as_str());
        }
    }
    // Positive control: while cached, the values are in the process.
    for (_, canary) in credentials {
        assert!(
            !occurrences(pid, canary.as_bytes()).is_empty(),
            "the scan cannot see the cached value: it would prove nothing"
        );
    }

    for source in ["files", "vault"] {
        let purged = client
            .post(url("/v1/admin/cache/purge"))
            .bearer_auth("gw-token")
            .json(&json!({ "source": source }))
            .send()
            .await
            .unwrap();
        assert_eq!(purged.status(), 200);
    }
    // The cache's maintenance runs every second; give it three.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<(&str, Vec<String>)> = credentials
        .iter()
        .map(|(name, canary)| (*name, occurrences(pid, canary.as_bytes())))
        .filter(|(_, at)| !at.is_empty())
        .collect();
    running.child.kill().await.unwrap();
    assert!(
        left.is_empty(),
        "copies of secrets left in memory: {left:?}"
    );
}
