//! From a request line to what the Vault API is asked: the one place its paths are parsed
//! (and the fuzz target's entry point). Nothing here authenticates or reads.

use axum::http::Method;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET sys/health` (no token needed, as in Vault).
    Health,
    /// `POST auth/cert/login` (the client certificate is the credential).
    Login,
    /// `POST auth/approle/login` (`role_id` and `secret_id` in the body).
    AppRoleLogin,
    /// `POST auth/jwt/login` or `auth/kubernetes/login` (`role` and `jwt` in the body).
    JwtLogin {
        kubernetes: bool,
    },
    /// `GET sys/internal/ui/mounts/<mount>…`: what the CLIs ask before a KV read.
    MountInfo(String),
    LookupSelf,
    RenewSelf,
    /// A write, delete or list: this API is read-only.
    ReadOnly,
    /// `GET <mount>/data/<path…>` (or `metadata/`), at a version when one is given.
    Read {
        mount: String,
        path: Vec<String>,
        version: Option<u64>,
        metadata: bool,
    },
    /// `LIST <mount>/metadata/<path…>` (or `GET …?list=true`): the keys under a path.
    List {
        mount: String,
        path: Vec<String>,
    },
    /// `?version=` that is not a number (answered 400 once the caller is known).
    BadVersion,
    NotFound,
}

/// Why a request line was refused before anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not under `/v1/`.
    NotApi,
    /// A percent-decoded segment is not UTF-8.
    NotUtf8,
}

/// Parses `method`, `path` and `query` of a request. Empty segments are dropped (Vault joins
/// `a//b` as `a/b`); segments are percent-decoded one by one, so `%2F` stays inside its segment
/// (where the reference rules refuse it).
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v1/").ok_or(RouteError::NotApi)?;
    let mut segments = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(s) => segments.push(s.into_owned()),
            Err(_) => return Err(RouteError::NotUtf8),
        }
    }
    let query = query.unwrap_or("");
    let listing = method.as_str() == "LIST" || query.split('&').any(|p| p == "list=true");
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST || method == Method::PUT;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    Ok(match seg.as_slice() {
        ["sys", "health"] if get => Route::Health,
        ["auth", "cert", "login"] if post => Route::Login,
        ["auth", "approle", "login"] if post => Route::AppRoleLogin,
        ["auth", "jwt", "login"] if post => Route::JwtLogin { kubernetes: false },
        ["auth", "kubernetes", "login"] if post => Route::JwtLogin { kubernetes: true },
        ["sys", "internal", "ui", "mounts", mount, ..] if get => {
            Route::MountInfo((*mount).to_owned())
        }
        ["auth", "token", "lookup-self"] if get => Route::LookupSelf,
        ["auth", "token", "renew-self"] if post => Route::RenewSelf,
        [mount, "metadata", path @ ..] if listing => Route::List {
            mount: (*mount).to_owned(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        },
        [_, "data" | "metadata", ..] if listing || !get => Route::ReadOnly,
        [mount, kind @ ("data" | "metadata"), path @ ..] if !path.is_empty() => {
            let version = match query
                .split('&')
                .find_map(|p| p.strip_prefix("version="))
                .map(str::parse::<u64>)
            {
                None | Some(Ok(0)) => None,
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => return Ok(Route::BadVersion),
            };
            Route::Read {
                mount: (*mount).to_owned(),
                path: path.iter().map(|s| (*s).to_owned()).collect(),
                version,
                metadata: *kind == "metadata",
            }
        }
        _ if !get => Route::ReadOnly,
        _ => Route::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = Method::GET;
        assert_eq!(route(&get, "/v1/sys/health", None), Ok(Route::Health));
        assert_eq!(route(&get, "/v2/x", None), Err(RouteError::NotApi));
        assert_eq!(route(&get, "/v1/a/%ff", None), Err(RouteError::NotUtf8));
        assert_eq!(
            route(&get, "/v1/vault/data//demo/db", Some("version=3")),
            Ok(Route::Read {
                mount: "vault".into(),
                path: vec!["demo".into(), "db".into()],
                version: Some(3),
                metadata: false,
            })
        );
        assert_eq!(
            route(&get, "/v1/vault/data/a%2Fb", None),
            Ok(Route::Read {
                mount: "vault".into(),
                path: vec!["a/b".into()],
                version: None,
                metadata: false,
            })
        );
        assert_eq!(
            route(&get, "/v1/vault/data/x", Some("version=soon")),
            Ok(Route::BadVersion)
        );
        assert_eq!(
            route(
                &Method::from_bytes(b"LIST").unwrap(),
                "/v1/vault/metadata/x",
                None
            ),
            Ok(Route::List {
                mount: "vault".into(),
                path: vec!["x".into()],
            })
        );
        // A list of `data/` is a write-shaped request: refused as one.
        assert_eq!(
            route(&get, "/v1/vault/data/x", Some("list=true")),
            Ok(Route::ReadOnly)
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/anything", None),
            Ok(Route::ReadOnly)
        );
        assert_eq!(route(&get, "/v1/vault/data", None), Ok(Route::NotFound));
    }
}
