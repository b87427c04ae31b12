//! Pushed notifications (`[notify]`): `certificate.expiring`, `certificate.expired` and
//! `credential.rejected` events, each once per change (where the audit trail gets its event),
//! POSTed as JSON to a webhook. TLS is verified (against `ca_cert` when given, else the
//! system roots; plain `http://` only to loopback); with `hmac_key_file` each body is signed
//! (`X-Keybroker-Signature: sha256=<hex HMAC of the body>`); each body carries a
//! `delivery_id` and its `time` under that signature, so a replayed delivery can be told
//! apart. A bounded queue (`queue.rs`: one pending event per subject, fair across teams) and
//! one sender task: a slow or dead receiver costs keybroker a full queue (events dropped and
//! counted, never a blocked request); failed deliveries are retried with backoff.
//!
//! Events name credentials and certificates, never values.

mod queue;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub(crate) use crate::config::NotifyConfig;

/// One event as the receiver gets it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    /// `certificate.expiring`, `certificate.expired`, `credential.rejected`.
    pub event: &'static str,
    /// RFC 3339, when keybroker saw the change.
    pub time: String,
    /// What it is about: `credential:<team>/<name>`, `pin:<consumer>`, `server:…`, or for a
    /// rejection `<team>/<name>:<role>`.
    pub subject: String,
    /// The verification code of a rejection, or the kind of certificate.
    pub reason: &'static str,
    /// Unique per event (the same on each retry of its delivery), under the signature: a
    /// receiver tells a replayed delivery from a new event.
    pub delivery_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("[notify] webhook {0:?} is not an https URL (plain http only to loopback)")]
    Url(String),
    #[error(transparent)]
    Key(#[from] crate::secret::KeyFileError),
    #[error("[notify] {0}")]
    Http(#[from] crate::source::HttpSetupError),
}

/// The sending side, held by the broker.
#[derive(Clone, Debug)]
pub(crate) struct Notifier {
    queue: Arc<queue::Queue>,
    /// The sender, until [`Notifier::start`] takes it into its task.
    sender: Arc<std::sync::Mutex<Option<Sender>>>,
}

impl Notifier {
    /// Checks the settings; events queue (bounded) until [`Notifier::start`].
    pub(crate) fn new(cfg: &NotifyConfig) -> Result<Self, NotifyError> {
        let sender = Sender::new(cfg)?;
        Ok(Self {
            queue: Arc::new(queue::Queue::new(cfg.queue)),
            sender: Arc::new(std::sync::Mutex::new(Some(sender))),
        })
    }

    /// Starts the sender task, once (the server's operations call it; from within a runtime).
    pub(crate) fn start(&self) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            tokio::spawn(sender.run(Arc::clone(&self.queue)));
        }
    }

    /// Checks the settings without starting anything (`keybroker check`).
    pub(crate) fn check(cfg: &NotifyConfig) -> Result<(), NotifyError> {
        Sender::new(cfg).map(|_| ())
    }

    /// Queues `event`; never waits. A pending event about the same subject is replaced; a
    /// full queue drops the oldest event of the team holding the most (counted, logged).
    pub(crate) fn send(&self, event: Event) {
        self.queue.push(event);
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// Its client and key are not printed.
struct Sender {
    url: reqwest::Url,
    client: reqwest::Client,
    key: Option<hmac::Hmac<sha2::Sha256>>,
    attempts: u32,
}

impl Sender {
    fn new(cfg: &NotifyConfig) -> Result<Self, NotifyError> {
        let url = reqwest::Url::parse(&cfg.webhook)
            .ok()
            .filter(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && crate::source::is_loopback(u))
            })
            .ok_or_else(|| NotifyError::Url(cfg.webhook.clone()))?;
        let client = crate::source::http_client(cfg.timeout.0, cfg.ca_cert.as_deref(), None)?;
        let key = match &cfg.hmac_key_file {
            None => None,
            Some(path) => {
                use hmac::KeyInit;
                let key = crate::secret::KeyFile::load("[notify] hmac_key_file", path, 16)?;
                Some(
                    hmac::Hmac::new_from_slice(key.bytes()).expect("HMAC takes keys of any length"),
                )
            }
        };
        Ok(Self {
            url,
            client,
            key,
            attempts: cfg.attempts.max(1),
        })
    }

    async fn run(self, queue: Arc<queue::Queue>) {
        let backoff = crate::backoff::Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: 0.25,
        };
        loop {
            let event = queue.next().await;
            let body = serde_json::to_vec(&event).unwrap_or_default();
            for attempt in 1..=self.attempts {
                match self.deliver(&body).await {
                    Ok(()) => break,
                    Err(why) if attempt < self.attempts => {
                        tracing::debug!(attempt, %why, event = event.event, "notification not delivered; retrying");
                        tokio::time::sleep(backoff.delay(attempt)).await;
                    }
                    Err(why) => {
                        tracing::warn!(attempts = self.attempts, %why, event = event.event, "notification not delivered; giving up");
                    }
                }
            }
        }
    }

    async fn deliver(&self, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.key {
            use hmac::Mac;
            let mut mac = key.clone();
            mac.update(body);
            let tag = hex::encode(mac.finalize().into_bytes());
            request = request.header("X-Keybroker-Signature", format!("sha256={tag}"));
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the webhook answered {}", r.status())),
            Err(e) => Err(crate::source::http_causes(&e)),
        }
    }
}

impl Event {
    /// An event that happens now.
    pub(crate) fn now(event: &'static str, subject: String, reason: &'static str) -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the OS random number generator is available");
        Self {
            event,
            time: now(),
            subject,
            reason,
            delivery_id: hex::encode(id),
        }
    }
}

/// Now, as RFC 3339 (seconds).
fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
