//! A throwaway PKI for TLS tests: CAs that issue server and client certificates into a
//! folder, as PEM files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use sha2::{Digest, Sha256};

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// An issued certificate: where its files are, and its DER.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Issued {
    /// `aa:bb:…` SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Certificate and key in one PEM (reqwest's `Identity::from_pem`).
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}{}", self.cert_pem, self.key_pem).into_bytes()
    }
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    /// A CA certificate anyone can make from this CA's public certificate alone: its name and
    /// public key, signed by a key of the maker's own (other DER, same key).
    pub fn impostor(&self) -> String {
        let maker = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = self.params.distinguished_name.clone();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::from_params(&params, &maker);
        params.signed_by(&self.key, &issuer).unwrap().pem()
    }

    /// A PEM revocation list of this CA revoking `revoked`, valid for a day.
    pub fn crl(&self, revoked: &[&Issued]) -> String {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|i| {
                let (_, cert) = x509_parser::parse_x509_certificate(&i.der).unwrap();
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                }
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(&issuer).unwrap().pem().unwrap()
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        self.issue_dn(dir, name, &[(DnType::CommonName, cn)], sans, usage)
    }

    /// A client certificate valid from `not_before` to `not_after` (Unix seconds).
    pub fn client_valid(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        not_before: i64,
        not_after: i64,
    ) -> Issued {
        self.issue_with(
            dir,
            name,
            &[(DnType::CommonName, cn)],
            vec![format!("{name}.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
            Some((not_before, not_after)),
        )
    }

    fn issue_dn(
        &self,
        dir: &Path,
        name: &str,
        dn: &[(DnType, &str)],
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        self.issue_with(dir, name, dn, sans, usage, None)
    }

    fn issue_with(
        &self,
        dir: &Path,
        name: &str,
        dn: &[(DnType, &str)],
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        validity: Option<(i64, i64)>,
    ) -> Issued {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        if let Some((not_before, not_after)) = validity {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        }
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key, &issued.key_pem).unwrap();
        issued
    }

    pub fn server(&self, dir: &Path, name: &str) -> Issued {
        self.issue(
            dir,
            name,
            "keybroker",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server certificate for the names `sans`.
    pub fn server_for(&self, dir: &Path, name: &str, sans: &[&str]) -> Issued {
        self.issue(
            dir,
            name,
            sans.first().copied().unwrap_or("keybroker"),
            sans.iter().map(|s| (*s).to_owned()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with the subject attributes `dn`, in that order.
    pub fn client_dn(&self, dir: &Path, name: &str, dn: &[(DnType, &str)]) -> Issued {
        self.issue_dn(
            dir,
            name,
            dn,
            vec![format!("{name}.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    pub fn client(&self, dir: &Path, name: &str, cn: &str) -> Issued {
        self.issue(
            dir,
            name,
            cn,
            vec![format!("{name}.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}
