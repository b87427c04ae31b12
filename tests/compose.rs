//! docker-compose.vault.yml and the Dockerfile cannot run here (no Docker engine). This checks
//! what they promise: OpenBao in dev mode on loopback, seeded by the very script the vault tests
//! run; keybroker *serving* examples/compose/keybroker.toml — which runs here against
//! `bao server -dev`, wired the way compose wires it — and an image whose health check is
//! `keybroker health` and whose dependency layer builds from the manifest alone.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::openbao::{OpenBao, ROOT_TOKEN};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker-compose.vault.yml"
    ))
    .unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn services_ports_environment_and_seeding() {
    let c = compose();
    let s = &c["services"];
    let bao = &s["openbao"];
    assert!(
        bao["image"]
            .as_str()
            .unwrap()
            .starts_with("openbao/openbao:")
    );
    let cmd: Vec<&str> = bao["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[..2], ["server", "-dev"]);
    assert!(cmd.contains(&"-dev-root-token-id=root"));
    assert_eq!(
        bao["ports"][0], "127.0.0.1:8200:8200",
        "published on loopback only"
    );

    let seed = &s["seed"];
    assert_eq!(
        seed["depends_on"]["openbao"]["condition"],
        "service_healthy"
    );
    assert_eq!(seed["environment"]["BAO_ADDR"], "http://openbao:8200");
    let entry: Vec<&str> = seed["entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(entry.last(), Some(&"/kb/scripts/seed-openbao.sh"));
    let mounts: Vec<&str> = seed["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&"./scripts:/kb/scripts:ro"),
        "the seed runs the repository's own script"
    );
    assert!(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/seed-openbao.sh"
        ))
        .is_file()
    );

    let kb = &s["keybroker"];
    assert_eq!(
        kb["depends_on"]["seed"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        kb["depends_on"]["certs"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(kb["environment"]["BAO_TOKEN"], "root");
    let cmd: Vec<&str> = kb["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        cmd,
        ["serve"],
        "keybroker serves, it does not resolve once and exit"
    );
    // `serve` and the image's HEALTHCHECK read the same configuration.
    assert_eq!(
        kb["environment"]["KEYBROKER_CONFIG"],
        "/kb/examples/compose/keybroker.toml"
    );
    let volumes: Vec<&str> = kb["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./examples:/kb/examples:ro"));
    assert!(volumes.contains(&"pki:/kb/pki:ro"));
    // The certificates keybroker reads are the ones the certs job writes.
    let certs = s["certs"]["entrypoint"].as_array().unwrap();
    let script = certs.last().unwrap().as_str().unwrap();
    assert!(
        script.contains("/kb/examples/tls/gen-certs.sh /kb/pki"),
        "{script}"
    );
    assert!(script.contains("chown -R 10001"), "{script}");
    let config =
        std::fs::read_to_string(format!("{REPO}/examples/compose/keybroker.toml")).unwrap();
    assert!(config.contains("\"/kb/pki/server.pem\""));
    assert!(config.contains("http://openbao:8200"));
}

/// examples/compose/keybroker.toml as compose runs it, with compose's names mapped to this
/// machine: `openbao:8200` to a `bao server -dev` seeded by the same script, `/kb/pki` to the
/// output of the same gen-certs.sh, the listeners to loopback port 0 (`--ready-file` says where).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_configuration_serves_the_seeded_secrets() {
    let bao = OpenBao::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let made = Command::new("sh")
        .arg(format!("{REPO}/examples/tls/gen-certs.sh"))
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = std::fs::read_to_string(format!("{REPO}/examples/compose/keybroker.toml"))
        .unwrap()
        .replace("http://openbao:8200", &bao.addr)
        .replace("/kb/pki/", &format!("{}/", pki.display()))
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("0.0.0.0:9090", "127.0.0.1:0")
        .replace(
            "policies = \"policies\"",
            &format!("policies = \"{REPO}/examples/compose/policies\""),
        );
    let kb_toml = dir.path().join("kb.toml");
    std::fs::write(&kb_toml, config).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    // Compose's environment: BAO_TOKEN, nothing else of Vault's.
    let _server = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--config"])
        .arg(&kb_toml)
        .arg("--ready-file")
        .arg(dir.path().join("ready.json"))
        .env("BAO_TOKEN", ROOT_TOKEN)
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_ADDR")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The image's HEALTHCHECK command as it runs there: no URL, the configuration's own
    // ops listener (through KEYBROKER_CONFIG).
    let image_check = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["health", "--timeout", "2s"])
        .env("KEYBROKER_CONFIG", &kb_toml)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&image_check.stdout);
    assert!(said.contains("127.0.0.1:0/readyz"), "{said}");
    let bound = support::server::ready(&dir.path().join("ready.json")).await;
    let (port, ops) = (bound["listen"].port(), bound["ops_listen"].port());
    let health = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["health", "--timeout", "2s", "--url", url])
            .output()
            .unwrap()
    };
    let readyz = format!("http://127.0.0.1:{ops}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health(&readyz).status.success() {
        assert!(
            Instant::now() < deadline,
            "not ready:\n{}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let answer: Value = client
        .post(format!("https://localhost:{port}/v1/resolve"))
        .bearer_auth("compose-demo-token")
        .json(&serde_json::json!({
            "document": {
                "user": "$SECRET_demo/db $KEY_username",
                "legacy": "$SECRET_legacy:legacy/app $KEY_token",
            },
            "host": "api.payments.example",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["document"]["user"], "app", "{answer}");
    assert_eq!(answer["document"]["legacy"], "v1-token-7f2", "{answer}");
    // Nothing listening: the health check fails (exit 1), it does not hang or pass.
    let (_held, closed_port) = support::ports::closed_port();
    let closed = health(&format!("http://127.0.0.1:{closed_port}/readyz"));
    assert_eq!(closed.status.code(), Some(1));
}

fn dockerfile() -> String {
    std::fs::read_to_string(format!("{REPO}/Dockerfile")).unwrap()
}

#[test]
fn the_image_is_stripped_has_ca_certificates_and_checks_its_own_health() {
    let d = dockerfile();
    assert!(d.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"));
    assert!(d.contains("CARGO_PROFILE_RELEASE_DEBUG=0"));
    assert!(d.contains("install -y --no-install-recommends ca-certificates"));
    assert!(d.contains("EXPOSE 8443 9090"));
    assert!(d.contains("CMD [\"keybroker\", \"health\"]"));
    assert!(d.contains("ENV KEYBROKER_CONFIG="));
    let manifest_first = d.find("COPY Cargo.toml Cargo.lock ./").unwrap();
    let sources = d.find("COPY . .").unwrap();
    assert!(
        manifest_first < sources,
        "the dependency layer comes before the sources"
    );
}

/// The dependency layer's stubs: with only Cargo.toml, Cargo.lock and the stub step, cargo
/// must get past reading the manifest (every bench and example it names exists).
#[test]
fn the_dockerfile_dependency_layer_stubs_every_target_of_the_manifest() {
    let d = dockerfile();
    let stub = d
        .lines()
        .find(|l| l.starts_with("RUN mkdir -p src"))
        .expect("the stub step")
        .trim_start_matches("RUN ");
    let dir = tempfile::tempdir().unwrap();
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(Path::new(REPO).join(f), dir.path().join(f)).unwrap();
    }
    let ran = Command::new("sh")
        .arg("-c")
        .arg(stub)
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(ran.success());
    // A target name that does not exist: cargo answers about it only once the manifest parsed.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--locked", "--bin", "no-such-target"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no bin target named"), "{stderr}");
}
