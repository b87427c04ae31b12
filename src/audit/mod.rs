//! The audit trail (docs/DESIGN.md §9): one JSON line per decision, appended to a file or
//! stdout. Never a value: a record holds identities, what was asked for (credential names,
//! `source:path` of references), the destination, the decision and its reason code, repairs
//! and latency. With `hmac_key_file`, the identifiers of what was asked for and the host are
//! replaced by `hmac-sha256:<hex>` so the trail can be shipped where names are sensitive and
//! still be correlated.
//!
//! A write that fails is an error the broker turns into a refusal when `fail_closed` (the
//! default): no answer leaves without its audit line (docs/THREATS.md row 15).
//!
//! With `fsync = "always"`, lines are written by one thread with group commit: a request hands
//! its line over and waits until it is written and synced; lines that arrive meanwhile share the
//! next write and sync — one `fdatasync` per batch instead of per request, without giving up
//! "on disk before answered". With `fsync = "never"` a request writes its line itself (one
//! `write` under a mutex): cheaper than a hand-over to a thread when nothing waits for a disk.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

use hmac::{KeyInit, Mac};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::config::{AuditConfig, FsyncPolicy};

mod budget;
mod group;

pub(crate) use budget::{Admit, RefusalBudget};
pub(crate) use group::Ticket;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::secret::KeyFileError),
    /// The sink refused a line (disk full, file gone read-only, closed stdout, …).
    #[error("the audit log cannot be written: {0}")]
    Write(std::io::ErrorKind),
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC.
    pub time: Timestamp,
    pub action: Action,
    /// Consumer name, or `operator`.
    pub consumer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<&'a str>,
    /// Credential name or `source:path` of each reference (HMAC'd when configured): the
    /// first [`MAX_SUBJECTS`]; the rest are counted and digested, so a caller cannot make
    /// one line as large as its request (THREATS row 27).
    pub subjects: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects_omitted: Option<usize>,
    /// Digest of the omitted subjects (newline-joined): HMAC with the audit key when one is
    /// configured, else SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Cow<'a, str>>,
    pub decision: Outcome,
    /// Stable reason code.
    pub reason: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    pub latency_us: u64,
    /// On a summary line: how many failed authentications of this peer were not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// The door a request came through when not keybroker's own API (`vault_api`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// The serial of the client certificate handed out (an issued one is traced by it);
    /// never the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<&'a str>,
}

/// What an audit line is about (its `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    #[serde(rename = "resolve")]
    Resolve,
    #[serde(rename = "credentials.list")]
    CredentialsList,
    /// The names under a folder of a source the caller may read (the Vault API's `LIST`).
    #[serde(rename = "secrets.list")]
    SecretsList,
    #[serde(rename = "credential.metadata")]
    CredentialMetadata,
    #[serde(rename = "credential.material")]
    CredentialMaterial,
    /// A certificate signed for a caller's CSR (`POST /v1/credentials/{name}/sign`).
    #[serde(rename = "credential.sign")]
    CredentialSign,
    /// A consumer's own next certificate signed through its `identity_profile`
    /// (`POST /v1/consumers/self/certificates`).
    #[serde(rename = "consumer.renew")]
    ConsumerRenew,
    #[serde(rename = "admin.reload")]
    AdminReload,
    #[serde(rename = "admin.purge")]
    AdminPurge,
    /// `/metrics` on the consumer-facing listener (admins only).
    #[serde(rename = "metrics")]
    Metrics,
    /// A request whose caller could not be authenticated.
    #[serde(rename = "authenticate")]
    Authenticate,
    /// A consumer exchanged its client certificate for a token (Vault API `auth/cert/login`).
    #[serde(rename = "auth.login")]
    Login,
    /// keybroker started serving (also proves the trail writable, for `/readyz`).
    #[serde(rename = "service.start")]
    ServiceStart,
    /// A certificate keybroker knows expires within `[expiry] warn_before`.
    #[serde(rename = "certificate.expiring")]
    CertificateExpiring,
    /// A certificate keybroker knows has expired.
    #[serde(rename = "certificate.expired")]
    CertificateExpired,
    /// A credential's verdict became a refusal (once per change, not per request).
    #[serde(rename = "credential.rejected")]
    CredentialRejected,
    /// Management: a credential created through the API.
    #[serde(rename = "credential.create")]
    CredentialCreate,
    /// Management: a credential's definition and material replaced (a rotation).
    #[serde(rename = "credential.update")]
    CredentialUpdate,
    /// Management: a credential deleted.
    #[serde(rename = "credential.delete")]
    CredentialDelete,
    /// Management: a consumer created (its token handed out once).
    #[serde(rename = "consumer.create")]
    ConsumerCreate,
    /// Management: a consumer's settings changed.
    #[serde(rename = "consumer.update")]
    ConsumerUpdate,
    /// Management: a consumer deleted.
    #[serde(rename = "consumer.delete")]
    ConsumerDelete,
    /// Management: a consumer's token replaced (the new one handed out once).
    #[serde(rename = "consumer.token")]
    ConsumerToken,
    /// Management: a client certificate added to a consumer.
    #[serde(rename = "consumer.certificate.add")]
    ConsumerCertificateAdd,
    /// Management: a consumer's client certificate revoked.
    #[serde(rename = "consumer.certificate.revoke")]
    ConsumerCertificateRevoke,
    /// Management: a consumer's issuer ACL set or removed.
    #[serde(rename = "consumer.issuer_acl")]
    ConsumerIssuerAcl,
    /// Management: a consumer's AppRole made or its `secret_id` replaced (handed out once).
    #[serde(rename = "consumer.approle")]
    ConsumerApprole,
    /// Management: a consumer's AppRole removed.
    #[serde(rename = "consumer.approle.delete")]
    ConsumerApproleDelete,
    /// Management: a revoked fingerprint's tombstone lifted (operator only).
    #[serde(rename = "consumer.certificate.lift")]
    ConsumerCertificateLift,
    /// Management: a credential create checked and not written (`?dry_run=true`).
    #[serde(rename = "credential.dry_run")]
    CredentialDryRun,
    /// Management: a read of the store's view (a credential, its versions, a consumer, a
    /// list), decided like a write: the caller manages the team.
    #[serde(rename = "manage.read")]
    ManageRead,
}

/// How a decision ended (the line's `decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    /// Refused by the policy (or authentication).
    Denied,
    /// Allowed, but it could not be carried out (a source, a document, a limit).
    Failed,
    /// Not a decision: an event keybroker reports (start, certificate expiry).
    Notice,
}

/// `subject` as written: itself, or — past [`MAX_SUBJECT_BYTES`] — its first 48 bytes, its
/// length and the first 16 hex digits of its SHA-256 (THREATS row 39: one reference of 900 KB
/// was a 900 KB line).
fn bounded(subject: Cow<'_, str>) -> Cow<'_, str> {
    if subject.len() <= MAX_SUBJECT_BYTES {
        return subject;
    }
    use sha2::Digest;
    let mut cut = 48;
    while !subject.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
    Cow::Owned(format!(
        "{}…({} bytes, sha256:{})",
        &subject[..cut],
        subject.len(),
        &digest[..16]
    ))
}

/// Subjects listed in one audit line before the rest are only counted and digested.
pub(crate) const MAX_SUBJECTS: usize = 100;

/// A subject longer than this is written as its first bytes, its length and its digest: with
/// [`MAX_SUBJECTS`] of them a line stays under 16 KiB however long a caller's reference is.
pub(crate) const MAX_SUBJECT_BYTES: usize = 120;

/// Where audit lines go.
#[derive(Debug)]
enum Sink {
    File(File, PathBuf),
    Stdout,
}

impl Sink {
    /// After logrotate renamed the file (and SIGHUP asked): the path again, appended to or
    /// created. A path that cannot be opened keeps the file in hand (and says so).
    fn reopen_if_asked(&mut self, asked: &std::sync::atomic::AtomicBool) {
        if !asked.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        if let Sink::File(file, path) = self {
            match OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(reopened) => {
                    *file = reopened;
                    tracing::info!(path = %path.display(), "audit file reopened");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the audit file; writing to the one open");
                }
            }
        }
    }
}

/// One line to write and whom to tell when it is.
type Job = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(), std::io::ErrorKind>>,
);

/// How lines reach the sink.
enum Writer {
    /// The caller writes (fsync never).
    Direct(Mutex<Sink>),
    /// The group-commit thread writes and syncs (fsync always).
    Grouped(mpsc::Sender<Job>, group::Coming),
}

pub struct Audit {
    writer: Writer,
    /// Set by [`Audit::reopen`]; the writer reopens the path before its next line.
    reopen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    key: Option<Zeroizing<Vec<u8>>>,
    fsync: FsyncPolicy,
    fail_closed: bool,
    path: PathBuf,
    writable: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("path", &self.path)
            .field("hmac", &self.key.as_ref().map(|_| "[redacted]"))
            .field("fsync", &self.fsync)
            .field("fail_closed", &self.fail_closed)
            .finish()
    }
}

impl Audit {
    pub fn open(cfg: &AuditConfig) -> Result<Self, AuditError> {
        let sink = if cfg.path == Path::new("-") {
            Sink::Stdout
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&cfg.path)
                .map_err(|source| AuditError::Open {
                    path: cfg.path.clone(),
                    source,
                })?;
            Sink::File(file, cfg.path.clone())
        };
        let reopen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let key = match &cfg.hmac_key_file {
            None => None,
            Some(path) => {
                let key = crate::secret::KeyFile::load("[audit] hmac_key_file", path, 16)?;
                Some(key.into_bytes())
            }
        };
        let writer = match cfg.fsync {
            FsyncPolicy::Never => Writer::Direct(Mutex::new(sink)),
            FsyncPolicy::Always => {
                let (jobs, queue) = mpsc::channel::<Job>();
                let coming = group::Coming::default();
                let announced = coming.clone();
                let asked = std::sync::Arc::clone(&reopen);
                std::thread::Builder::new()
                    .name("keybroker-audit".to_owned())
                    .spawn(move || group_commit(sink, &queue, &announced, &asked))
                    .map_err(|source| AuditError::Open {
                        path: cfg.path.clone(),
                        source,
                    })?;
                Writer::Grouped(jobs, coming)
            }
        };
        Ok(Self {
            writer,
            reopen,
            key,
            fsync: cfg.fsync,
            fail_closed: cfg.fail_closed,
            path: cfg.path.clone(),
            writable: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Reopens the file by its path before the next line (SIGHUP after logrotate renamed it).
    pub fn reopen(&self) {
        self.reopen
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a failed write must refuse the request.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// The subjects of one line: the first [`MAX_SUBJECTS`] as identifiers, and for the rest
    /// their number and one digest.
    pub fn subjects<'s>(
        &self,
        all: &'s [String],
    ) -> (Vec<Cow<'s, str>>, Option<usize>, Option<String>) {
        let shown = all.len().min(MAX_SUBJECTS);
        let listed = all[..shown]
            .iter()
            .map(|s| bounded(self.identifier(s)))
            .collect();
        if shown == all.len() {
            return (listed, None, None);
        }
        let rest = all[shown..].join("\n");
        let digest = match &self.key {
            Some(_) => self.identifier(&rest).into_owned(),
            None => {
                use sha2::Digest;
                format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(rest.as_bytes()))
                )
            }
        };
        (listed, Some(all.len() - shown), Some(digest))
    }

    /// An identifier as it may appear in the trail: itself, or its HMAC.
    ///
    /// (Subjects are bounded in length by [`bounded`] on top of this.)
    /// `id` as the trail shows it: itself, or its HMAC when a key is configured.
    pub fn identifier<'s>(&self, id: &'s str) -> Cow<'s, str> {
        match &self.key {
            None => Cow::Borrowed(id),
            Some(key) => {
                let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(id.as_bytes());
                Cow::Owned(format!(
                    "hmac-sha256:{}",
                    hex::encode(mac.finalize().into_bytes())
                ))
            }
        }
    }

    pub fn writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends one line and returns once it is written (and synced, by policy).
    /// Announces a line this request will write (see `group.rs`): a sync then waits for it
    /// so that it shares the batch. `None` when lines are not synced.
    pub fn announce(&self) -> Option<Ticket> {
        match &self.writer {
            Writer::Direct(_) => None,
            Writer::Grouped(_, coming) => Some(coming.announce()),
        }
    }

    pub async fn write(&self, record: &Record<'_>) -> Result<(), AuditError> {
        self.write_announced(record, None).await
    }

    /// [`Audit::write`] of the line `ticket` announced.
    pub async fn write_announced(
        &self,
        record: &Record<'_>,
        ticket: Option<Ticket>,
    ) -> Result<(), AuditError> {
        let result = self.write_line(record, ticket).await;
        self.writable
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    async fn write_line(
        &self,
        record: &Record<'_>,
        ticket: Option<Ticket>,
    ) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).expect("an audit record serializes");
        line.push(b'\n');
        let jobs = match &self.writer {
            Writer::Direct(sink) => {
                let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
                sink.reopen_if_asked(&self.reopen);
                return put(&mut sink, &line, false).map_err(|e| AuditError::Write(e.kind()));
            }
            Writer::Grouped(jobs, _) => jobs,
        };
        let (done, written) = tokio::sync::oneshot::channel();
        // No longer to come, then handed over. A batch that closes in between misses this
        // line, which then opens the next batch at once; the other order could leave the
        // writer waiting out a whole gap for a line it already holds.
        drop(ticket);
        // The writer thread lives as long as `self`; a send or receive failure means it died.
        jobs.send((line, done))
            .map_err(|_| AuditError::Write(std::io::ErrorKind::BrokenPipe))?;
        match written.await {
            Ok(result) => result.map_err(AuditError::Write),
            Err(_) => Err(AuditError::Write(std::io::ErrorKind::BrokenPipe)),
        }
    }
}

/// Writes `bytes` to the sink, then syncs a file when asked.
fn put(sink: &mut Sink, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    match sink {
        Sink::File(f, _) => {
            f.write_all(bytes)?;
            if sync { f.sync_data() } else { Ok(()) }
        }
        Sink::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
    }
}

/// The writer thread: takes every line waiting and every line announced within the window
/// (`group::collect`), writes them at once, syncs once, then tells each sender. Ends when the [`Audit`] is dropped.
fn group_commit(
    mut sink: Sink,
    queue: &mpsc::Receiver<Job>,
    coming: &group::Coming,
    reopen: &std::sync::atomic::AtomicBool,
) {
    let mut batch: Vec<Job> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(first) = queue.recv() {
        sink.reopen_if_asked(reopen);
        batch.push(first);
        group::collect(queue, coming, group::Window::DEFAULT, &mut batch);
        buf.clear();
        for (line, _) in &batch {
            buf.extend_from_slice(line);
        }
        let result = put(&mut sink, &buf, true).map_err(|e| e.kind());
        for (_, done) in batch.drain(..) {
            // A requester that gave up (timeout) no longer waits; nothing to do.
            let _ = done.send(result);
        }
    }
}

/// A moment of the trail, written as RFC 3339 UTC with milliseconds (formatted straight into
/// the line, not through a `String`).
#[derive(Clone, Copy, Debug)]
pub struct Timestamp(std::time::SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(std::time::SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, key: Option<&str>) -> AuditConfig {
        let hmac_key_file = key.map(|k| {
            let p = dir.join("audit.key");
            std::fs::write(&p, k).unwrap();
            p
        });
        AuditConfig {
            path: dir.join("audit.log"),
            hmac_key_file,
            fail_closed: true,
            fsync: FsyncPolicy::Always,
        }
    }

    fn record(subject: String) -> Record<'static> {
        Record {
            time: Timestamp::now(),
            action: Action::CredentialMaterial,
            consumer: "gw",
            team: Some("payments"),
            subjects: vec![subject.into()],
            subjects_omitted: None,
            subjects_digest: None,
            host: Some("api.partner.example".into()),
            decision: Outcome::Allowed,
            reason: "allowed",
            repairs: vec![],
            stale: false,
            latency_us: 12,
            suppressed: None,
            via: None,
            serial: None,
        }
    }

    /// THREATS row 39: however long the subjects, a line of MAX_SUBJECTS of them stays under
    /// 16 KiB; a long subject keeps its start, its length and a digest.
    #[test]
    fn threat_39_long_subjects_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Audit::open(&config(dir.path(), None)).unwrap();
        let long = format!("$SECRET_files:{} $KEY_é", "a/".repeat(450_000));
        let all = vec![long.clone(); 150];
        let (listed, omitted, digest) = plain.subjects(&all);
        assert_eq!(omitted, Some(50));
        assert!(listed[0].starts_with("$SECRET_files:a/a/"), "{}", listed[0]);
        assert!(listed[0].contains(&format!("({} bytes, sha256:", long.len())));
        assert!(listed.iter().all(|s| s.len() <= MAX_SUBJECT_BYTES));
        let line = serde_json::to_string(&serde_json::json!({
            "subjects": listed, "omitted": omitted, "digest": digest
        }))
        .unwrap();
        assert!(line.len() < 16 * 1024, "{} bytes", line.len());
        // Short subjects are written as they are; a cut never splits a character.
        let few = ["files:a/b".to_owned(), "é".repeat(100)];
        let (short, _, _) = plain.subjects(&few);
        assert_eq!(short[0], "files:a/b");
        assert!(short[1].starts_with(&"é".repeat(24)));
    }

    /// THREATS row 27: a line lists at most MAX_SUBJECTS subjects; the rest are a count and
    /// one digest (HMAC'd with the audit key when there is one).
    #[test]
    fn threat_27_subject_lists_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<String> = (0..5000).map(|i| format!("files:a/{i}")).collect();
        let plain = Audit::open(&config(dir.path(), None)).unwrap();
        let (listed, omitted, digest) = plain.subjects(&all);
        assert_eq!(listed.len(), MAX_SUBJECTS);
        assert_eq!(omitted, Some(5000 - MAX_SUBJECTS));
        assert!(digest.unwrap().starts_with("sha256:"));
        let (few, none, no_digest) = plain.subjects(&all[..3]);
        assert_eq!(few, all[..3].iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!((none, no_digest), (None, None));
        let keyed = Audit::open(&config(dir.path(), Some(&"k".repeat(32)))).unwrap();
        let (listed, _, digest) = keyed.subjects(&all);
        assert!(listed.iter().all(|s| s.starts_with("hmac-sha256:")));
        assert!(digest.unwrap().starts_with("hmac-sha256:"));
    }

    #[tokio::test]
    async fn appends_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(&config(dir.path(), None)).unwrap();
        audit
            .write(&record(audit.identifier("partner-api").into_owned()))
            .await
            .unwrap();
        audit
            .write(&record(audit.identifier("other").into_owned()))
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["subjects"][0], "partner-api");
        assert_eq!(lines[1]["decision"], "allowed");
    }

    #[test]
    fn hmac_hides_identifiers_but_keeps_them_comparable() {
        let dir = tempfile::tempdir().unwrap();
        let audit =
            Audit::open(&config(dir.path(), Some("an audit key of enough bytes\n"))).unwrap();
        let a = audit.identifier("partner-api");
        assert!(a.starts_with("hmac-sha256:"), "{a}");
        assert!(!a.contains("partner"));
        assert_eq!(a, audit.identifier("partner-api"));
        assert_ne!(a, audit.identifier("partner-apj"));
        assert!(!format!("{audit:?}").contains("k3y"));
    }

    /// Both modes, on worker threads writing at once: every line whole, none lost, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_each_get_their_own_whole_line() {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = AuditConfig {
                fsync,
                ..config(dir.path(), None)
            };
            let audit = std::sync::Arc::new(Audit::open(&cfg).unwrap());
            let tasks: Vec<_> = (0..400)
                .map(|i| {
                    let audit = std::sync::Arc::clone(&audit);
                    // Lines of about 1 KiB, so that a torn write would show.
                    let subject = format!("c-{i}-{}", "x".repeat(900));
                    tokio::spawn(async move { audit.write(&record(subject)).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
            let mut seen: Vec<String> = text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|e| panic!("{fsync:?}: a torn line: {e}"))["subjects"][0]
                        .to_string()
                })
                .collect();
            assert_eq!(seen.len(), 400, "{fsync:?}");
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 400, "{fsync:?}");
        }
    }

    #[tokio::test]
    async fn a_failing_sink_reports_to_every_writer() {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let cfg = AuditConfig {
                path: PathBuf::from("/dev/full"),
                hmac_key_file: None,
                fail_closed: true,
                fsync,
            };
            let audit = Audit::open(&cfg).unwrap();
            let err = audit.write(&record("x".to_owned())).await.unwrap_err();
            assert!(matches!(err, AuditError::Write(_)), "{fsync:?}: {err}");
        }
    }

    #[test]
    fn empty_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Audit::open(&config(dir.path(), Some("  \n"))).unwrap_err();
        assert!(matches!(
            err,
            AuditError::Key(crate::secret::KeyFileError::Short { min: 16, .. })
        ));
    }
}
