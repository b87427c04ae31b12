//! Path and query parameters parsed into types (names above all) before a handler runs: a team slug or an entry name that is not one (`..%2F`, `%2E%2E`, an encoded slash in
//! `?team=`) is a 400 `invalid`, and nothing is looked up, decided or touched for it.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

fn invalid(where_: &str) -> ApiError {
    ApiError::BadRequest {
        code: "invalid",
        message: format!(
            "{where_}: a parameter does not parse (a team or a name matches [a-z0-9_-]{{1,64}})"
        ),
    }
}

/// `Path<T>` whose names are [`crate::store::TeamSlug`] / [`crate::store::EntryName`].
pub(crate) struct NamePath<T>(pub T);

impl<T, S> FromRequestParts<S> for NamePath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Self(t))
            .map_err(|_| invalid("path"))
    }
}

/// `Query<T>` whose names are parsed the same way.
pub(crate) struct NameQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for NameQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Self(t))
            .map_err(|_| invalid("query"))
    }
}
