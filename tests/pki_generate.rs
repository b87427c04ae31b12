//! Issue 47, keys born where they are used: `keybroker agent` with `key = "generate"` makes
//! the key on the gateway's host, sends keybroker only a CSR that names nothing, and keeps the
//! key and the certificate signed for it (by a real OpenBao PKI) in front of a real nginx —
//! through two periods, with no failed request, and no key in any log or audit line.

mod support {
    pub mod fixture;
    pub mod memscan;
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod pki_bao;
    pub mod ports;
    pub mod server;
}

use std::time::{Duration, Instant};

use x509_parser::prelude::*;

use support::fixture;
use support::openbao::OpenBao;
use support::pki_bao::{audited_bao, pem_der, pki_mount, sign, signed_count};
use support::server::{Running, folder};

const GW: &str = "pki-gen-gw-token";

/// keybroker with a signing profile whose certificates live 30 s (a period of 10 s) and a
/// credential of team payments made from it.
async fn serve(bao: &OpenBao) -> (tempfile::TempDir, Running) {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .consumer("gw", "payments", GW)
        .and("[[credential]]\nname = \"partner-sign\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:fast-sign $KEY_certificate\"")
        .write(root);
    fixture::Config::tls()
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.fast-sign]\nrole = \"signer\"\ncommon_name = \"gw.payments.example\"\nttl = \"30s\"\nissue = \"sign\"\nkey_type = \"ec\"\n",
            bao.addr
        ))
        .audit()
        .write(root);
    std::fs::write(root.join("server-ca.pem"), &ca.pem).unwrap();
    let running = Running::start(root, &ca.pem, 0, "debug").await;
    (dir, running)
}

/// `agent.toml` for one generating output; `ops_listen` on a port of the system's choosing when
/// `reload` is given (the running agent).
fn agent_config(root: &std::path::Path, port: u16, reload: &[String]) -> std::path::PathBuf {
    let ops = if reload.is_empty() {
        ""
    } else {
        "ops_listen = \"127.0.0.1:0\"\n"
    };
    let reload = reload
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{ops}[server]\nurl = \"https://127.0.0.1:{port}\"\nca_cert = \"server-ca.pem\"\ntoken_file = \"gw-token\"\nwait = \"5s\"\n[[output]]\ncredential = \"partner-sign\"\nhost = \"api.partner.example\"\ndir = \"certs\"\nfiles = [\"cert.pem\", \"key.pem\"]\nkey = \"generate\"\nreload = [{reload}]\n"
        ),
    )
    .unwrap();
    config
}

/// The SubjectPublicKeyInfo of the certificate in `pem`.
fn key_of(pem: &str) -> Vec<u8> {
    let der = pem_der(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.public_key().raw.to_vec()
}

/// The serial of the certificate in `pem` as nginx's `$ssl_client_serial` spells it (upper-case
/// hex, no leading zeros); `None` for a file read half-way through a swap.
fn try_serial(pem: &str) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&p.contents).ok()?;
    Some(
        cert.raw_serial_as_string()
            .replace(':', "")
            .to_uppercase()
            .trim_start_matches('0')
            .to_owned(),
    )
}

/// The port of the agent's `ops_listen`, from its log (within 20 s).
async fn ops_port(log: &std::path::Path) -> String {
    let at = "\"ops_listen\":\"127.0.0.1:";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find(at) {
            return text[i + at.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "no ops_listen in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The public key (SPKI, DER) of a private key in PEM, by openssl.
fn public_of(key_pem: &str, work: &std::path::Path) -> Vec<u8> {
    let path = work.join("probe-key.pem");
    std::fs::write(&path, key_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The base64 body lines of a PEM key: what a leak of it would show.
fn key_lines(key_pem: &str) -> Vec<String> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

/// A CSR with an empty subject and no extension request is signed by a real OpenBao with the
/// profile's name (OpenBao takes the request's `common_name` when the CSR has none), and
/// passes keybroker's check of what came back — no revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameless_csr_is_signed_with_the_profiles_name() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao).await;
    let csr = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/seeds/csr_check/p256-nameless.csr"
    ))
    .unwrap();
    let (status, body) = sign(&s, GW, "partner-sign", &csr).await;
    assert_eq!(status, 200, "{body}");
    let der = pem_der(body["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["gw.payments.example"]);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"gw.payments.example\")]"
    );
    assert_eq!(signed_count(&bao_audit), 1);
    let revokes = String::from_utf8_lossy(&std::fs::read(&bao_audit).unwrap())
        .matches("\"path\":\"pki/revoke\"")
        .count();
    assert_eq!(
        revokes, 0,
        "the certificate was the profile's: nothing revoked"
    );
}

/// The whole path: the agent makes a P-256 key per period, nginx presents the certificate
/// signed for it to an upstream that trusts only the PKI CA, through two periods, and no
/// request fails. OpenBao's audit log shows `sign` and no `issue`; the key file is 0600 and
/// carries the certificate's key; no key is in keybroker's memory, log or audit, nor in the
/// agent's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_makes_its_key_and_nginx_presents_it_through_two_periods() {
    use std::os::unix::fs::PermissionsExt as _;
    let (bao, bao_audit, _audit_dir) = audited_bao();
    let ca_pem = pki_mount(&bao);
    let (dir, s) = serve(&bao).await;
    let root = dir.path().to_owned();
    std::fs::write(root.join("gw-token"), GW).unwrap();
    // The first files, before nginx starts (it needs them to start).
    let config = agent_config(&root, s.port, &[]);
    let once = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let mut agent_logs = String::from_utf8_lossy(&once.stderr).into_owned();
    assert_eq!(once.status.code(), Some(0), "{agent_logs}");
    let certs = root.join("certs");
    let once_serial = try_serial(&std::fs::read_to_string(certs.join("cert.pem")).unwrap());
    let prefix = root.join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(prefix.join("pki-ca.pem"), &ca_pem).unwrap();
    let upstream = support::pki::Ca::new("upstream server CA").server(&prefix, "upstream");
    let (nginx, ports) = support::nginx::gateway(
        &prefix,
        &prefix.join("pki-ca.pem"),
        &upstream.cert,
        &upstream.key,
        &certs,
        "$ssl_client_serial",
    );
    agent_config(&root, s.port, &nginx.reload_argv());
    let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Ready at once: the files `--once` wrote are found current (not signed again).
    let ops = format!(
        "http://127.0.0.1:{}",
        ops_port(&root.join("agent.log")).await
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{ops}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        try_serial(&std::fs::read_to_string(certs.join("cert.pem")).unwrap()),
        once_serial,
        "ready only after a new key: the files in place were not taken as current"
    );
    let url = format!("http://127.0.0.1:{}/", ports[1]);
    let mut seen = std::collections::BTreeSet::<String>::new();
    // Each key the agent wrote, by the serial of the certificate beside it.
    let mut written = std::collections::BTreeMap::<String, String>::new();
    let (mut failed, mut ok) = (Vec::new(), 0u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 3 {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                ok += 1;
                let serial = r.text().await.unwrap_or_default();
                seen.insert(serial.trim().trim_start_matches('0').to_owned());
            }
            Ok(r) => failed.push(r.status().to_string()),
            Err(e) => failed.push(e.to_string()),
        }
        if let (Ok(cert), Ok(key)) = (
            std::fs::read_to_string(certs.join("cert.pem")),
            std::fs::read_to_string(certs.join("key.pem")),
        ) && let Some(serial) = try_serial(&cert)
        {
            written.entry(serial).or_insert(key);
        }
        assert!(
            Instant::now() < deadline,
            "serials seen {seen:?}:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // keybroker never had a key the agent made (only CSRs): none is anywhere in its memory.
    let needles: Vec<(String, Vec<u8>)> = written
        .iter()
        .flat_map(|(serial, k)| support::memscan::key_needles(&format!("key of {serial}"), k))
        .collect();
    let found = support::memscan::scan(s.pid(), &needles);
    assert!(
        found.is_empty(),
        "keybroker holds a key the agent made: {found:?}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    // The running agent found the files of `--once` current at its start and is ready; its
    // health and metrics answers carry no key.
    let mut ops_answers = String::new();
    for path in ["/readyz", "/metrics"] {
        let r = client.get(format!("{ops}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        ops_answers.push_str(&r.text().await.unwrap());
    }
    assert!(ops_answers.contains("keybroker_agent_certificate_expiry_timestamp_seconds"));
    drop(agent);
    agent_logs.push_str(&ops_answers);
    agent_logs.push_str(&std::fs::read_to_string(root.join("agent.log")).unwrap());

    // What nginx presented is what the agent wrote: each serial's certificate beside the key
    // the agent made for it.
    let work = tempfile::tempdir().unwrap();
    let cert = std::fs::read_to_string(certs.join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(certs.join("key.pem")).unwrap();
    assert_eq!(key_of(&cert), public_of(&key, work.path()));
    assert!(
        seen.iter().filter(|s| written.contains_key(*s)).count() >= 2,
        "presented {seen:?}, written {:?}",
        written.keys()
    );
    let key_file = std::fs::metadata(certs.join("key.pem")).unwrap();
    assert_eq!(key_file.permissions().mode() & 0o777, 0o600);

    // OpenBao signed (once per key) and issued nothing.
    let bao_log = String::from_utf8_lossy(&std::fs::read(&bao_audit).unwrap()).into_owned();
    assert!(signed_count(&bao_audit) >= 3);
    assert_eq!(bao_log.matches("pki/issue/").count(), 0, "no issue");

    // No key the agent made is in any log or audit line of keybroker's, nor in the agent's
    // log and `ops_listen` answers.
    let server_logs = ["stdout.log", "stderr.log", "audit.log"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap_or_default())
        .collect::<String>();
    assert!(server_logs.contains("credential.sign"), "audited");
    assert!(written.len() >= 2);
    for key in written.values().chain([&key]) {
        for line in key_lines(key) {
            assert!(!server_logs.contains(&line), "keybroker logged a key");
            assert!(!agent_logs.contains(&line), "the agent logged a key");
            assert!(!bao_log.contains(&line), "OpenBao saw a key");
        }
    }
    assert!(!server_logs.contains("PRIVATE KEY") && !agent_logs.contains("PRIVATE KEY"));
    drop(nginx);
}
