//! The agent renews its own identity (docs/AGENT.md, "The agent's own certificate"): when its
//! `client_cert` is two thirds through its life it makes a new key (as `key = "generate"`
//! does), sends only the CSR to `POST /v1/consumers/self/certificates`, checks the
//! certificate carries that key, writes the key (0600) and the certificate over
//! `client_key` and `client_cert`, and has the client present them from the next request on.
//! A failure is retried with back-off while the old identity keeps working.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::client::Client;
use super::config::ServerSection;

/// Why one renewal did not happen (never a key, nor the answer's text).
#[derive(Debug, thiserror::Error)]
pub(super) enum RenewError {
    #[error("cannot make a key or CSR: {0}")]
    Generate(#[from] super::generate::GenerateError),
    #[error(transparent)]
    Fetch(#[from] super::FetchError),
    #[error("the renewed certificate does not carry the key made for it")]
    NotOurKey,
    #[error("cannot write the renewed identity: {0}")]
    Io(#[from] std::io::Error),
}

/// `path` with `.next` appended: where a file waits for the swap.
fn next(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Finishes or undoes a swap a crash interrupted: the key is renamed into place first, then
/// the certificate — a `.next` certificate without a `.next` key is the second half of a
/// swap (done now); both still waiting is one not begun (dropped: the old pair stands).
pub(super) fn recover(server: &ServerSection) {
    let (Some(cert), Some(key)) = (&server.client_cert, &server.client_key) else {
        return;
    };
    let (cert_next, key_next) = (next(cert), next(key));
    let outcome = match (cert_next.exists(), key_next.exists()) {
        (true, false) => std::fs::rename(&cert_next, cert).map(|()| "finished"),
        (true, true) => std::fs::remove_file(&cert_next)
            .and_then(|()| std::fs::remove_file(&key_next))
            .map(|()| "undone"),
        (false, true) => std::fs::remove_file(&key_next).map(|()| "undone"),
        (false, false) => return,
    };
    match outcome {
        Ok(what) => tracing::warn!(what, "an interrupted renewal of the agent's identity"),
        Err(e) => tracing::error!(error = %e, "cannot recover an interrupted identity renewal"),
    }
}

/// Writes the new key and certificate over `client_key` and `client_cert`: both first beside
/// them (`.next`, synced), then the key renamed into place, then the certificate.
fn swap(cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
    crate::atomic_file::write(&next(key), key_pem.as_bytes(), 0o600)?;
    crate::atomic_file::write(&next(cert), cert_pem.as_bytes(), 0o644)?;
    std::fs::rename(next(key), key)?;
    std::fs::rename(next(cert), cert)?;
    for dir in [cert.parent(), key.parent()].into_iter().flatten() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// When the certificate at `cert` is due (Unix seconds): two thirds of the way from when it
/// was written (its file's time, or its `not_before` when later — the signer back-dates
/// that) to its `not_after`; `None` when it cannot be read.
fn due(cert: &Path) -> Option<i64> {
    let pem = std::fs::read_to_string(cert).ok()?;
    let (not_before, not_after) = super::files::leaf_validity(&pem)?;
    let written = std::fs::metadata(cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(not_before);
    Some(two_thirds(
        written,
        not_before,
        not_after,
        super::now_unix(),
    ))
}

/// Two thirds from `written` (or `not_before` if later; never after `now`) to `not_after`.
fn two_thirds(written: i64, not_before: i64, not_after: i64, now: i64) -> i64 {
    let from = written.max(not_before).min(now);
    from + (not_after - from) * 2 / 3
}

/// One renewal: the new identity written and in use; its `not_after`.
async fn renew_once(client: &Client, server: &ServerSection) -> Result<i64, RenewError> {
    let (Some(cert), Some(key)) = (&server.client_cert, &server.client_key) else {
        return Ok(0);
    };
    let kind = server.renew_key_type;
    let fresh = tokio::task::spawn_blocking(move || super::generate::fresh(kind))
        .await
        .map_err(|_| RenewError::Io(std::io::Error::other("the key task failed")))??;
    let renewed = client.renew_identity(&fresh.csr_pem).await?;
    if !super::generate::carries_key(&renewed.certificate, &fresh.spki) {
        return Err(RenewError::NotOurKey);
    }
    let (_, not_after) =
        super::files::leaf_validity(&renewed.certificate).ok_or(RenewError::NotOurKey)?;
    let mut chain = renewed.certificate.trim_end().to_owned();
    if let Some(more) = renewed.ca_chain.as_deref().filter(|c| !c.trim().is_empty()) {
        chain.push('\n');
        chain.push_str(more.trim_end());
    }
    chain.push('\n');
    swap(cert, key, &chain, &fresh.key_pem)?;
    client.reload_identity(server)?;
    tracing::info!(serial = %renewed.serial_number, not_after, "the agent's identity renewed: its new certificate is in use");
    Ok(not_after)
}

/// Renews the agent's `client_cert` whenever it is due, for as long as the agent runs.
pub(super) async fn keep(client: Arc<Client>, server: ServerSection, ops: Arc<super::ops::State>) {
    let Some(cert) = server.client_cert.clone() else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let until_due = due(&cert).map_or(Duration::from_secs(60), |at| {
            Duration::from_secs(u64::try_from(at - super::now_unix()).unwrap_or(0))
        });
        tokio::time::sleep(until_due.max(super::backoff(failures))).await;
        match renew_once(&client, &server).await {
            Ok(not_after) => {
                failures = 0;
                ops.set_identity_expiry(not_after);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "the agent's identity was not renewed; the one in use stays while valid");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Due two thirds into the life left when written; a back-dated `not_before` does not make
    /// it due early.
    #[test]
    fn an_identity_is_due_two_thirds_into_its_life() {
        // Written at 1000, valid 970..1030: due at 1020.
        assert_eq!(two_thirds(1000, 970, 1030, 1000), 1020);
        assert_eq!(two_thirds(5000, 970, 1030, 1000), 1020);
    }

    /// A swap interrupted after the key was renamed is finished at start; one not begun is
    /// dropped and the old pair stands.
    #[test]
    fn an_interrupted_swap_is_finished_or_undone() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let server = ServerSection {
            url: "https://x".into(),
            ca_cert: None,
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            token_file: None,
            wait: Duration::from_secs(1),
            renew: true,
            renew_key_type: super::super::config::KeyType::P256,
        };
        std::fs::write(&cert, "old cert").unwrap();
        std::fs::write(&key, "new key").unwrap();
        std::fs::write(next(&cert), "new cert").unwrap();
        recover(&server);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new cert");
        std::fs::write(next(&cert), "newer cert").unwrap();
        std::fs::write(next(&key), "newer key").unwrap();
        recover(&server);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new cert");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "new key");
        assert!(!next(&cert).exists() && !next(&key).exists());
    }
}
