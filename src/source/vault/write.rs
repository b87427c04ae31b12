//! The management store's use of a vault source (`[store] kind = "vault"`): KV v2 writes,
//! lists and metadata under the source's mount, with the source's own token and re-login.
//! Only the store calls these; consumers' reads never write.

use bytes::Bytes;
use secrecy::SecretString;
use url::Url;
use zeroize::Zeroizing;

use super::{Inner, VaultSource};
use crate::source::SourceError;

/// Which half of a KV v2 path: the versioned `data/` (its newest version, or `DataAt` one
/// version) or the `metadata/` (list, versions, delete of every version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPart {
    Data,
    DataAt(u64),
    Metadata,
}

impl VaultSource {
    /// `method` on `<mount>/<part>/<path>` (KV v2 only) with `body`; `None` on 404.
    /// A 403 with a token that is no longer valid logs in again once, as reads do.
    pub async fn kv(
        &self,
        method: reqwest::Method,
        part: KvPart,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, SourceError> {
        let inner = &self.inner;
        let answer = self
            .authorized(|token| {
                let (method, body) = (method.clone(), body.clone());
                async move { inner.kv_once(&method, part, path, body, &token).await }
            })
            .await;
        match answer {
            Ok(b) => Ok(Some(b)),
            Err(SourceError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `method` on an API path outside the KV mount (e.g. `pki/issue/<role>`), with the
    /// source's token and the same re-login.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        let inner = &self.inner;
        self.authorized(|token| {
            let (method, body) = (method.clone(), body.clone());
            async move {
                let url = inner.url(path)?;
                inner.call_bytes(method, url, Some(&token), body).await
            }
        })
        .await
    }
}

impl Inner {
    async fn kv_once(
        &self,
        method: &reqwest::Method,
        part: KvPart,
        path: &str,
        body: Option<Bytes>,
        token: &SecretString,
    ) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        if self.kv_version(token).await? != 2 {
            return Err(SourceError::Unsupported("the store needs a KV v2 mount"));
        }
        let url = self.kv_url(part, path)?;
        self.call_bytes(method.clone(), url, Some(token), body)
            .await
    }

    fn kv_url(&self, part: KvPart, path: &str) -> Result<Url, SourceError> {
        let mut url = self.url(&self.mount)?;
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| SourceError::Invalid("the path does not form a URL"))?;
            segs.push(match part {
                KvPart::Data | KvPart::DataAt(_) => "data",
                KvPart::Metadata => "metadata",
            });
            for s in path.split('/').filter(|s| !s.is_empty()) {
                segs.push(s);
            }
        }
        if let KvPart::DataAt(version) = part {
            url.query_pairs_mut()
                .append_pair("version", &version.to_string());
        }
        Ok(url)
    }
}
