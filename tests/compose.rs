//! docker-compose.vault.yml cannot run here (no Docker engine); this checks what it promises:
//! OpenBao in dev mode on loopback, seeded by the very script the vault tests run, and
//! keybroker pointed at it with only VAULT_ADDR and VAULT_TOKEN.

use serde_json::Value;

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
    assert_eq!(kb["environment"]["VAULT_ADDR"], "http://openbao:8200");
    assert_eq!(kb["environment"]["VAULT_TOKEN"], "root");
    let cmd: Vec<&str> = kb["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd.contains(&"/kb/examples/vault/keybroker.toml"));
}
