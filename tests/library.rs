//! The library's surface is enough on its own (src/lib.rs): a program that embeds keybroker
//! loads a configuration, builds a broker and reads through it with only the items `lib.rs`
//! re-exports — nothing from `keybroker::testing`. A surface that loses one of them fails to
//! compile here.

use keybroker::{Ask, Broker, Caller, Config, Document, Door, Expand, Format, Layout};

#[tokio::test]
async fn a_program_reads_through_the_public_surface_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets/app")).unwrap();
    std::fs::write(
        dir.path().join("secrets/app/db.json"),
        r#"{"password":"library-canary-0451"}"#,
    )
    .unwrap();
    let path = dir.path().join("kb.toml");
    std::fs::write(
        &path,
        "[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let broker = Broker::from_config(&config).unwrap();
    let expand = Expand {
        document: Document::Text {
            format: Format::Text,
            text: "pw=$SECRET_files:app/db $KEY_password".to_owned(),
        },
        layout: Layout::Compact,
    };
    let resolved = broker
        .read(Ask::new(&Caller::Operator, Door::Cli, expand))
        .await
        .unwrap();
    assert_eq!(resolved.document.as_bytes(), b"pw=library-canary-0451");
}
