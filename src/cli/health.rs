//! `keybroker health`: ask a running keybroker whether it is ready.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Failure, load_config};

/// The URL `keybroker health` asks: the one given, else the configuration's readiness probe
/// on a listener that needs no client certificate.
pub fn health_url(url: Option<String>, config: &Path) -> Result<String, Failure> {
    if let Some(url) = url {
        return Ok(url);
    }
    let config = load_config(config)?;
    // A wildcard address is asked on loopback.
    let local = |addr: SocketAddr| -> SocketAddr {
        match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        }
    };
    match (config.server.ops_listen, &config.server.tls_cert) {
        (Some(ops), _) => Ok(format!("http://{}/readyz", local(ops))),
        (None, None) => Ok(format!("http://{}/readyz", local(config.server.listen))),
        (None, Some(_)) => Err(Failure::Usage(
            "the main listener is TLS (it may ask for client certificates): set [server] ops_listen for health checks, or give --url and --ca-cert".to_owned(),
        )),
    }
}

/// `keybroker health`: one GET; the status line goes to stdout for the container log.
pub async fn health(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<(), Failure> {
    let client =
        crate::source::http_client(timeout, ca, None).map_err(|e| Failure::Usage(e.to_string()))?;
    match client.get(url).send().await {
        Ok(answer) if answer.status().is_success() => {
            println!("{url}: {}", answer.status());
            Ok(())
        }
        Ok(answer) => {
            println!("{url}: {}", answer.status());
            Err(Failure::Rejected)
        }
        Err(e) => {
            println!("{url}: {}", crate::source::http_causes(&e));
            Err(Failure::Rejected)
        }
    }
}
