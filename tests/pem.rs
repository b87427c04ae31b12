//! The PEM engine against real key material generated at run time by openssl (and rcgen for
//! validity windows openssl 3.0 cannot set): every flattening variant is repaired byte for
//! byte, every reject case gives its code, and no error carries key text.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use proptest::prelude::*;

use keybroker::testing::pem::{Checks, Mode, Options, PemError, RepairKind, repair};

/// Key material generated once per test binary.
struct Material {
    rsa2048_pkcs1: String,
    rsa4096_pkcs8: String,
    p256_sec1: String,
    p256_pkcs8: String,
    p384_sec1: String,
    p384_pkcs8: String,
    ed25519: String,
    encrypted_pkcs8: String,
    legacy_encrypted: String,
    root: String,
    inter: String,
    leaf: String,
    leaf_key: String,
    other_key: String,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed for the PEM tests (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &["genrsa", "-traditional", "-out", "rsa2048.pem", "2048"],
        );
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:4096",
                "-out",
                "rsa4096.pem",
            ],
        );
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "p256.pem",
            ],
        );
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "p256.pem", "-out", "p256.p8",
            ],
        );
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                "p384.pem",
            ],
        );
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "p384.pem", "-out", "p384.p8",
            ],
        );
        openssl(
            d,
            &["genpkey", "-algorithm", "ED25519", "-out", "ed25519.pem"],
        );
        openssl(
            d,
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:test",
                "-in",
                "p256.p8",
                "-out",
                "enc.p8",
            ],
        );
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa2048.pem",
                "-aes256",
                "-traditional",
                "-passout",
                "pass:test",
                "-out",
                "legacy.pem",
            ],
        );
        // A chain: root CA → intermediate CA → leaf, all P-256.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=Test Root",
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=Test Intermediate",
                "-keyout",
                "inter.key",
                "-out",
                "inter.csr",
            ],
        );
        std::fs::write(d.join("ca.ext"), "basicConstraints=critical,CA:TRUE\n").unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "inter.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "ca.ext",
                "-out",
                "inter.pem",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=leaf.example",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "inter.pem",
                "-CAkey",
                "inter.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                "leaf.pem",
            ],
        );
        Material {
            rsa2048_pkcs1: read(d, "rsa2048.pem"),
            rsa4096_pkcs8: read(d, "rsa4096.pem"),
            p256_sec1: read(d, "p256.pem"),
            p256_pkcs8: read(d, "p256.p8"),
            p384_sec1: read(d, "p384.pem"),
            p384_pkcs8: read(d, "p384.p8"),
            ed25519: read(d, "ed25519.pem"),
            encrypted_pkcs8: read(d, "enc.p8"),
            legacy_encrypted: read(d, "legacy.pem"),
            root: read(d, "root.pem"),
            inter: read(d, "inter.pem"),
            leaf: read(d, "leaf.pem"),
            leaf_key: read(d, "leaf.key"),
            other_key: read(d, "p256.p8"),
            _dir: dir,
        }
    })
}

fn all_values() -> Vec<(&'static str, String)> {
    let m = material();
    vec![
        ("rsa2048_pkcs1", m.rsa2048_pkcs1.clone()),
        ("rsa4096_pkcs8", m.rsa4096_pkcs8.clone()),
        ("p256_sec1", m.p256_sec1.clone()),
        ("p256_pkcs8", m.p256_pkcs8.clone()),
        ("p384_sec1", m.p384_sec1.clone()),
        ("p384_pkcs8", m.p384_pkcs8.clone()),
        ("ed25519", m.ed25519.clone()),
        ("encrypted_pkcs8", m.encrypted_pkcs8.clone()),
        ("legacy_encrypted", m.legacy_encrypted.clone()),
        ("chain", format!("{}{}{}", m.leaf, m.inter, m.root)),
        ("cert_and_key", format!("{}{}", m.leaf, m.leaf_key)),
        (
            "key_and_chain",
            format!("{}{}{}", m.leaf_key, m.leaf, m.inter),
        ),
    ]
}

fn opts() -> Options {
    Options::default()
}

fn ok(input: &str, o: &Options) -> (String, Vec<RepairKind>) {
    match repair(input, o) {
        Ok(r) => (r.pem.to_string(), r.repairs),
        Err(e) => panic!("repair failed: {} ({e})", e.code()),
    }
}

fn code(input: &str, o: &Options) -> &'static str {
    let e = repair(input, o).map(|_| ()).expect_err("must be rejected");
    assert_no_key_text(&e, input);
    e.code()
}

/// Errors never quote the input: no 12-character run of any body line appears in them.
fn assert_no_key_text(e: &PemError, input: &str) {
    let shown = format!("{e} {e:?}");
    for token in input
        .split_whitespace()
        .filter(|t| t.len() >= 12 && !t.starts_with("-----"))
    {
        assert!(
            !shown.contains(&token[..12]),
            "error quotes the input: {shown}"
        );
    }
}

#[test]
fn intact_values_pass_unchanged() {
    for (name, v) in all_values() {
        let (out, repairs) = ok(&v, &opts());
        assert_eq!(out, v, "{name}");
        assert!(repairs.is_empty(), "{name}: {repairs:?}");
    }
}

#[test]
fn every_flattening_variant_is_restored_byte_for_byte() {
    type Variant = (&'static str, fn(&str) -> String, RepairKind);
    let variants: [Variant; 9] = [
        ("crlf", |v| v.replace('\n', "\r\n"), RepairKind::Crlf),
        (
            "escaped",
            |v| v.replace('\n', "\\n"),
            RepairKind::EscapedNewlines,
        ),
        (
            "ccp_spaces",
            |v| v.replace('\n', " "),
            RepairKind::SpacesToNewlines,
        ),
        (
            "ccp_spaces_trimmed",
            |v| v.replace('\n', " ").trim_end().to_owned(),
            RepairKind::SpacesToNewlines,
        ),
        (
            "newlines_removed",
            |v| v.replace('\n', ""),
            RepairKind::NewlinesRemoved,
        ),
        (
            "all_whitespace_removed",
            |v| v.split_whitespace().collect(),
            RepairKind::NewlinesRemoved,
        ),
        (
            "runs",
            |v| v.replace('\n', " \t  "),
            RepairKind::WhitespaceRuns,
        ),
        (
            "tabs",
            |v| v.replace('\n', "\t"),
            RepairKind::WhitespaceRuns,
        ),
        (
            "surrounding",
            |v| format!(" \n\t{v}\n\n  "),
            RepairKind::Trimmed,
        ),
    ];
    for (name, v) in all_values() {
        for (variant, flatten, kind) in &variants {
            let input = flatten(&v);
            let (out, repairs) = ok(&input, &opts());
            assert_eq!(out, v, "{name} / {variant}");
            assert!(repairs.contains(kind), "{name} / {variant}: {repairs:?}");
        }
    }
}

#[test]
fn missing_final_newline_is_added() {
    let v = material().leaf.clone();
    let (out, repairs) = ok(v.trim_end(), &opts());
    assert_eq!(out, v);
    assert_eq!(repairs, vec![RepairKind::FinalNewline]);
}

#[test]
fn opt_in_armour_and_base64_wrapping() {
    let m = material();
    let body: String = m
        .p256_pkcs8
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join(" ");
    let o = Options {
        armour_for: Some("PRIVATE KEY"),
        ..opts()
    };
    let (out, repairs) = ok(&body, &o);
    assert_eq!(out, m.p256_pkcs8);
    assert!(repairs.contains(&RepairKind::ArmourAdded));
    assert_eq!(code(&body, &opts()), "no_pem_block", "armour is opt-in");

    let wrapped = base64::engine::general_purpose::STANDARD.encode(&m.leaf);
    let o = Options {
        base64_wrapped: true,
        ..opts()
    };
    let (out, repairs) = ok(&wrapped, &o);
    assert_eq!(out, m.leaf);
    assert_eq!(repairs, vec![RepairKind::Base64Decoded]);
}

#[test]
fn legacy_headers_are_rebuilt_with_their_blank_line() {
    let v = material().legacy_encrypted.clone();
    assert!(v.contains("Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,"));
    let flat = v.replace('\n', " ");
    assert_eq!(ok(&flat, &opts()).0, v);
    let squashed: String = v.replace('\n', "");
    assert_eq!(ok(&squashed, &opts()).0, v);
}

#[test]
fn reject_cases_have_their_codes() {
    let m = material();
    let o = opts();
    let leaf = &m.leaf;
    assert_eq!(code("", &o), "no_pem_block");
    assert_eq!(code("just text", &o), "no_pem_block");
    assert_eq!(
        code(&leaf.replace("END CERTIFICATE", "END PRIVATE KEY"), &o),
        "label_mismatch"
    );
    assert_eq!(
        code(&leaf.replace("-----END CERTIFICATE-----\n", ""), &o),
        "missing_end"
    );
    assert_eq!(code(&format!("hello {leaf}"), &o), "text_outside_blocks");
    assert_eq!(code(&format!("{leaf}trailer"), &o), "text_outside_blocks");
    let mut lines: Vec<&str> = leaf.lines().collect();
    let star = lines[2].replacen(|c: char| c.is_ascii_alphanumeric(), "*", 1);
    lines[2] = &star;
    assert_eq!(code(&lines.join("\n"), &o), "bad_base64");

    // Truncated DER: drop the last full body line (base64 stays valid).
    let mut lines: Vec<&str> = leaf.lines().collect();
    let n = lines.len();
    lines.remove(n - 3);
    assert_eq!(code(&lines.join("\n"), &o), "bad_der");

    // Trailing data after the DER element.
    let body: String = leaf.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    der.extend_from_slice(&[0, 0]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
    assert_eq!(code(&pem, &o), "trailing_data");

    // Well-formed DER that is not what the label says.
    let as_key = m.leaf.replace("CERTIFICATE", "PRIVATE KEY");
    assert_eq!(code(&as_key, &o), "bad_private_key");
    let as_cert = m.p256_pkcs8.replace("PRIVATE KEY", "CERTIFICATE");
    assert_eq!(code(&as_cert, &o), "bad_certificate");

    assert_eq!(
        code(&format!("{}{}", m.leaf, m.other_key), &o),
        "key_certificate_mismatch"
    );
    assert_eq!(
        code(&format!("{}{}", m.leaf_key, m.other_key), &o),
        "two_private_keys"
    );
    assert_eq!(
        code(&format!("{}{}", m.p256_pkcs8, m.encrypted_pkcs8), &o),
        "two_private_keys"
    );
    assert_eq!(
        code(&format!("{}{}{}", m.root, m.inter, m.leaf), &o),
        "chain_order"
    );
    assert_eq!(code(&format!("{}{}", m.leaf, m.root), &o), "chain_order");

    let leaf_only = Options {
        checks: Checks {
            expect_leaf: true,
            ..Checks::default()
        },
        ..opts()
    };
    assert_eq!(code(&m.root, &leaf_only), "ca_not_leaf");
    ok(&m.leaf, &leaf_only);
}

#[test]
fn expired_certificates_are_rejected_only_when_asked() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.example".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = params.self_signed(&key).unwrap().pem();
    let strict_time = Options {
        checks: Checks {
            reject_expired: true,
            ..Checks::default()
        },
        ..opts()
    };
    assert_eq!(code(&old, &strict_time), "expired");
    let r = repair(&old, &opts()).unwrap();
    assert!(r.blocks[0].days_left.unwrap() < 0);

    let mut params = rcgen::CertificateParams::new(vec!["new.example".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2090, 1, 1);
    params.not_after = rcgen::date_time_ymd(2091, 1, 1);
    let future = params.self_signed(&key).unwrap().pem();
    assert_eq!(code(&future, &strict_time), "not_yet_valid");
}

#[test]
fn strict_mode_accepts_only_intact_values() {
    let m = material();
    let strict = Options {
        mode: Mode::Strict,
        ..opts()
    };
    ok(&m.leaf, &strict);
    ok(m.leaf.trim_end(), &strict);
    assert_eq!(code(&m.leaf.replace('\n', " "), &strict), "not_intact");
    let unknown = "-----BEGIN FOO-----\nMAA=\n-----END FOO-----\n";
    assert_eq!(code(unknown, &strict), "unsupported_label");
    let (out, _) = ok(unknown, &opts());
    assert_eq!(out, unknown, "unknown labels pass through in repair mode");
}

#[test]
fn off_mode_passes_anything_through() {
    let off = Options {
        mode: Mode::Off,
        ..opts()
    };
    assert_eq!(ok("not pem at all", &off).0, "not pem at all");
}

#[test]
fn facts_describe_blocks_without_key_bytes() {
    let m = material();
    let r = repair(&format!("{}{}", m.leaf, m.leaf_key), &opts()).unwrap();
    assert_eq!(r.blocks.len(), 2);
    let cert = &r.blocks[0];
    assert_eq!(cert.kind, "certificate");
    assert_eq!(cert.subject.as_deref(), Some("CN=leaf.example"));
    assert_eq!(cert.issuer.as_deref(), Some("CN=Test Intermediate"));
    assert_eq!(cert.key_algorithm.as_deref(), Some("EC P-256"));
    assert_eq!(cert.key_bits, Some(256));
    assert_eq!(cert.is_ca, Some(false));
    assert!((29..=30).contains(&cert.days_left.unwrap()));
    let key = &r.blocks[1];
    assert_eq!(key.kind, "private_key");
    // A key's fingerprint is its public key's: it equals the certificate's SPKI, not the DER.
    assert_eq!(key.key_algorithm.as_deref(), Some("EC P-256"));
    let spki = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(m._dir.path().join("leaf.key"))
        .output()
        .unwrap();
    assert!(spki.status.success());
    let want: Vec<String> = <sha2::Sha256 as sha2::Digest>::digest(&spki.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(key.sha256.as_deref(), Some(want.join(":").as_str()));
    let rsa = repair(&m.rsa4096_pkcs8, &opts()).unwrap();
    assert_eq!(rsa.blocks[0].key_algorithm.as_deref(), Some("RSA"));
    assert_eq!(rsa.blocks[0].key_bits, Some(4096));
    let ed = repair(&m.ed25519, &opts()).unwrap();
    assert_eq!(ed.blocks[0].key_algorithm.as_deref(), Some("Ed25519"));
    let shown = format!("{r:?}");
    let body_line = m.leaf_key.lines().nth(1).unwrap();
    assert!(!shown.contains(&body_line[..16]), "Debug shows key text");
}

/// How each newline of a value is flattened in [`random_flattening_round_trips`].
fn newline_replacement() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("\n"),
        Just(" "),
        Just(""),
        Just("\t"),
        Just("  "),
        Just("\r\n"),
        Just(" \t ")
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random keys (from the generated set), each newline flattened independently at
    /// random, with random surrounding whitespace: always restored to the original bytes.
    #[test]
    fn random_flattening_round_trips(
        which in 0usize..12,
        seps in prop::collection::vec(newline_replacement(), 200),
        lead in "[ \t\n]{0,3}",
        tail in "[ \t\n]{0,3}",
    ) {
        let values = all_values();
        let (name, original) = &values[which];
        let mut input = lead.clone();
        for (i, line) in original.split_inclusive('\n').enumerate() {
            input.push_str(line.trim_end_matches('\n'));
            input.push_str(seps[i % seps.len()]);
        }
        input.push_str(&tail);
        let r = repair(&input, &opts());
        prop_assert!(r.is_ok(), "{}: {:?}", name, r.err());
        let repaired = r.unwrap();
        prop_assert_eq!(repaired.pem.as_str(), original.as_str(), "{}", name);
    }
}
