//! Hot TLS reload (docs/CONFIGURATION.md, "Reload without restart"): SIGHUP reads the server
//! certificate, key, `client_ca` and `client_crl` again. New handshakes see the new files, an
//! open keep-alive connection keeps working, a revoked client certificate is refused, and files
//! that do not load leave the previous settings in force.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use support::pki::{Ca, Issued};
use tokio_rustls::TlsConnector;

/// One TLS connection with HTTP/1.1 keep-alive on top: the server certificate it saw, and a
/// sender for requests on that same connection.
struct Connection {
    server_cert: Vec<u8>,
    sender: hyper::client::conn::http1::SendRequest<String>,
}

fn connector(roots: &[&Ca], client: &Issued) -> TlsConnector {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .unwrap();
    TlsConnector::from(Arc::new(config))
}

async fn connect(port: u16, tls: &TlsConnector) -> Result<Connection, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(Connection {
        server_cert,
        sender,
    })
}

impl Connection {
    /// `GET /healthz` on this connection: the status, or why it failed.
    async fn healthz(&mut self) -> Result<u16, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = hyper::Request::get("/healthz")
            .header("host", "localhost")
            .body(String::new())
            .unwrap();
        let answer = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let _ = answer.into_body().collect().await;
        Ok(status)
    }
}

/// A new connection and one request on it (a refused client certificate shows in TLS 1.3 only
/// when the server's alert arrives, on the first read).
async fn fresh(port: u16, tls: &TlsConnector) -> Result<(Vec<u8>, u16), String> {
    let mut c = connect(port, tls).await?;
    let status = c.healthz().await?;
    Ok((c.server_cert, status))
}

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// Renames `content` into place, as an operator rotating files should.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_server_certificate_and_the_revocation_list_without_dropping_connections()
 {
    let (dir, server_ca) = support::server::folder("unused");
    let root = dir.path();
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    let alice = clients.client(root, "alice", "alice");
    let bob = clients.client(root, "bob", "bob");
    std::fs::write(root.join("clients.crl"), clients.crl(&[])).unwrap();
    let first_server_cert = std::fs::read_to_string(root.join("server.pem")).unwrap();
    std::fs::write(
        root.join("kb.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"clients-ca.pem\"\nclient_crl = \"clients.crl\"\nclient_auth = \"required\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let stderr = std::fs::File::create(root.join("stderr.log")).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--log-format", "text", "--config"])
        .arg(root.join("kb.toml"))
        .arg("--ready-file")
        .arg(root.join("ready.json"))
        // Elsewhere: the files' relative paths are relative to the configuration file.
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "info")
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let port = support::server::ready(&root.join("ready.json")).await["listen"].port();
    let log = || std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();

    // A second server CA signs the replacement certificate: the client trusts both.
    let next_ca = Ca::new("next server CA");
    let as_alice = connector(&[&server_ca, &next_ca], &alice);
    let as_bob = connector(&[&server_ca, &next_ca], &bob);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kept = loop {
        let attempt = match connect(port, &as_bob).await {
            Ok(mut c) => c.healthz().await.map(|status| (c, status)),
            Err(e) => Err(e),
        };
        match attempt {
            Ok((c, 200)) => break c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("keybroker did not start: {:?}\n{}", other.err(), log()),
        }
    };
    let old_der = kept.server_cert.clone();
    assert_eq!(fresh(port, &as_alice).await.unwrap().1, 200);

    // Files that do not load: the previous settings stay, and the reason is logged.
    replace(
        &root.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    hup(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("TLS reload rejected") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (seen, status) = fresh(port, &as_bob).await.unwrap();
    assert_eq!(
        (seen, status),
        (old_der.clone(), 200),
        "a broken file replaced good settings"
    );
    replace(&root.join("server.pem"), &first_server_cert);

    // Rotate the server certificate and revoke bob, then signal.
    let next = next_ca.server(root, "next");
    std::fs::rename(&next.key, root.join("server-key.pem")).unwrap();
    std::fs::rename(&next.cert, root.join("server.pem")).unwrap();
    replace(&root.join("clients.crl"), &clients.crl(&[&bob]));
    hup(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fresh(port, &as_alice).await {
            Ok((der, 200)) if der == next.der => break,
            Ok((der, _)) if der == old_der && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!(
                "new handshakes do not see the new certificate: {other:?}\n{}",
                log()
            ),
        }
    }
    // Revoked after reload: bob's new connections are refused, alice's are not.
    let refused = fresh(port, &as_bob).await;
    assert!(
        refused.is_err(),
        "a revoked certificate was accepted: {refused:?}"
    );
    assert_eq!(fresh(port, &as_alice).await.unwrap().1, 200);
    // The connection opened before the reload is still served, with what it was made with.
    assert_eq!(
        kept.healthz().await,
        Ok(200),
        "reload dropped an open connection"
    );
    assert_eq!(kept.server_cert, old_der);
    drop(child);
}
