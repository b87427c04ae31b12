//! The one place where a request is decided. `keybroker resolve` and `POST /v1/resolve`
//! both call [`Broker::resolve`]; later stages (identity, policy, cache, PEM) slot in here
//! and nowhere else.
//!
//! Today's path: caller → prepare the document (find and check every reference) → map each
//! reference to a source and a read → read every distinct secret once, concurrently →
//! render all or nothing into a zeroizing buffer.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::config::{Config, SourceConfig};
use crate::reference::{
    DocumentError, ExpandError, Format, Layout, Prepared, Reason, Reference, Resolved, Target,
};
use crate::secret::{Secret, SecretBuf};
use crate::source::{FileSource, ReadRequest, SecretSource, SourceError};

/// Who is asking. Only the operator exists until consumers and policies arrive (issue 6);
/// the operator reads with keybroker's own source credentials and no access policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// The CLI without `--as`, or the `serve --dev` token.
    Operator,
}

/// A document to expand, as received.
#[derive(Debug)]
pub enum Document {
    /// A JSON value already parsed (the `document` of a `/v1/resolve` body).
    JsonValue(Value),
    /// Text in the given format (a file, or a YAML/text `document` string).
    Text { format: Format, text: String },
}

/// The expanded document and what is known about how it was made.
#[derive(Debug)]
pub struct Resolution {
    pub format: Format,
    /// JSON (when `format` is json) or the expanded text.
    pub document: SecretBuf,
    pub metadata: ResolveMetadata,
}

/// Facts about a resolution; never a value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResolveMetadata {
    /// True when any value came from a cache past its TTL (set from issue 8 on).
    pub stale: bool,
    /// PEM repairs applied (filled from issue 3 on).
    pub repairs: Vec<String>,
    /// Each distinct secret read, in first-use order.
    pub secrets: Vec<SecretUse>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretUse {
    pub source: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Every reference that failed, with its location and reason.
    #[error("{} reference(s) could not be resolved", .0.len())]
    Unresolved(Vec<ExpandError>),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("source `{name}`: {kind} sources are not available in this version of keybroker yet")]
    SourceNotAvailable { name: String, kind: &'static str },
    #[error("source `{name}`: cannot open {path}: {source}")]
    FileSource {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// Holds the sources; decides and serves requests. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Broker {
    sources: HashMap<String, Arc<dyn SecretSource>>,
    default_source: Option<String>,
    ccp_source: Option<String>,
}

/// (source name, read) — one backend read, shared by every reference to the same secret.
type ReadKey = (String, ReadRequest);

impl Broker {
    pub fn from_config(config: &Config) -> Result<Self, BuildError> {
        let mut sources: Vec<Arc<dyn SecretSource>> = Vec::new();
        for s in &config.sources {
            match s {
                SourceConfig::File(f) => {
                    let source = FileSource::new(&f.name, &f.path).map_err(|source| {
                        BuildError::FileSource {
                            name: f.name.clone(),
                            path: f.path.display().to_string(),
                            source,
                        }
                    })?;
                    sources.push(Arc::new(source));
                }
                SourceConfig::Vault(v) => {
                    return Err(BuildError::SourceNotAvailable {
                        name: v.name.clone(),
                        kind: "vault",
                    });
                }
                SourceConfig::Ccp(c) => {
                    return Err(BuildError::SourceNotAvailable {
                        name: c.name.clone(),
                        kind: "ccp",
                    });
                }
            }
        }
        Ok(Self::new(
            sources,
            config.default_source().map(str::to_owned),
            config.ccp_source().map(str::to_owned),
        ))
    }

    pub fn new(
        sources: Vec<Arc<dyn SecretSource>>,
        default_source: Option<String>,
        ccp_source: Option<String>,
    ) -> Self {
        let sources = sources
            .into_iter()
            .map(|s| (s.name().to_owned(), s))
            .collect();
        Self {
            sources,
            default_source,
            ccp_source,
        }
    }

    /// Expands every reference in `document`, or reports every one that fails.
    pub async fn resolve(
        &self,
        caller: &Caller,
        document: Document,
        layout: Layout,
    ) -> Result<Resolution, ResolveError> {
        let Caller::Operator = caller;
        let prepared = match document {
            Document::JsonValue(v) => Prepared::json(v, layout),
            Document::Text { format, text } => match format {
                Format::Json => Prepared::json_text(&text, layout),
                Format::Yaml => Prepared::yaml(&text),
                Format::Text => Prepared::text(&text),
            },
        }?;

        // Each distinct reference is mapped once; each distinct read happens once.
        let mut order: Vec<ReadKey> = Vec::new();
        let mut read_index: HashMap<ReadKey, usize> = HashMap::new();
        let mut plan: HashMap<&Reference, Result<usize, Reason>> = HashMap::new();
        for (reference, _) in prepared.references_unlocated() {
            if plan.contains_key(reference) {
                continue;
            }
            let step = self.read_key(reference).map(|key| {
                *read_index.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    order.len() - 1
                })
            });
            plan.insert(reference, step);
        }
        let secrets = self.read_all(&order).await;
        let lookup = |r: &Reference| -> Result<Resolved<'_>, Reason> {
            let index = plan.get(r).cloned().unwrap_or(Err(Reason::UnknownSource))?;
            let secret = secrets[index].as_ref().map_err(source_reason)?;
            pick(r, secret)
        };
        let document = prepared.render(&lookup).map_err(ResolveError::Unresolved)?;
        let metadata = ResolveMetadata {
            secrets: order
                .iter()
                .zip(&secrets)
                .map(|((source, req), secret)| SecretUse {
                    source: source.clone(),
                    path: req.path.to_string(),
                    version: secret
                        .as_ref()
                        .ok()
                        .and_then(|s| s.meta().version)
                        .or(req.version),
                })
                .collect(),
            ..ResolveMetadata::default()
        };
        Ok(Resolution {
            format: prepared.format(),
            document,
            metadata,
        })
    }

    /// Which source and which read a reference needs.
    fn read_key(&self, r: &Reference) -> Result<ReadKey, Reason> {
        let (source, request) = match &r.target {
            Target::Secret {
                source,
                path,
                version,
            } => {
                let name = match source {
                    Some(name) => name,
                    None => self
                        .default_source
                        .as_ref()
                        .ok_or(Reason::NoDefaultSource)?,
                };
                let request = ReadRequest {
                    path: path.clone(),
                    version: *version,
                };
                (name, request)
            }
            Target::Ccp { safe, object } => {
                let name = self.ccp_source.as_ref().ok_or(Reason::UnknownSource)?;
                let path = crate::reference::SecretPath::from_segments([safe.as_str(), object])
                    .map_err(Reason::Syntax)?;
                (
                    name,
                    ReadRequest {
                        path,
                        version: None,
                    },
                )
            }
        };
        if !self.sources.contains_key(source) {
            return Err(Reason::UnknownSource);
        }
        Ok((source.clone(), request))
    }

    /// Reads each key once, all concurrently; the answers are in the order of `keys`.
    async fn read_all(&self, keys: &[ReadKey]) -> Vec<Result<Secret, SourceError>> {
        let mut tasks = JoinSet::new();
        for (i, (name, request)) in keys.iter().enumerate() {
            let source = Arc::clone(&self.sources[name]);
            let request = request.clone();
            tasks.spawn(async move { (i, source.read(&request).await) });
        }
        let mut out: Vec<Result<Secret, SourceError>> = (0..keys.len())
            .map(|_| Err(SourceError::Unavailable("read task failed")))
            .collect();
        // A read task only panics on a bug; its key then stays "unavailable".
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, result)) = joined {
                out[i] = result;
            }
        }
        out
    }
}

/// The part of a secret a reference asks for.
fn pick<'s>(r: &Reference, secret: &'s Secret) -> Result<Resolved<'s>, Reason> {
    let field = match (&r.target, r.field.as_deref()) {
        (Target::Secret { .. }, None) => return Ok(Resolved::Whole(secret)),
        (Target::Ccp { .. }, None) => "Content",
        (_, Some(f)) => f,
    };
    secret
        .field(field)
        .map(Resolved::Value)
        .ok_or(Reason::FieldNotFound)
}

fn source_reason(e: &SourceError) -> Reason {
    match e {
        SourceError::NotFound => Reason::NotFound,
        SourceError::Denied => Reason::Denied,
        SourceError::Unavailable(_) => Reason::SourceUnavailable,
        SourceError::Unsupported(why) => Reason::Unsupported(why),
        SourceError::Malformed(why) => Reason::Malformed(why),
    }
}
