//! Around every route: the request timeout, JSON bodies for the router's own refusals, the
//! per-route request counter and duration.
//!
//! A hand-written layer rather than `axum::middleware::from_fn`: that one clones and boxes the
//! inner service on every request, which the cache-hit profile showed (docs/PERFORMANCE.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, ROUTES, change};

/// The layer ([`Observe::layer`]) and the service it wraps each route in.
#[derive(Clone)]
pub(super) struct Observe<S> {
    inner: S,
    state: Arc<AppState>,
}

impl Observe<()> {
    pub(super) fn layer(state: Arc<AppState>) -> ObserveLayer {
        ObserveLayer(state)
    }
}

#[derive(Clone)]
pub(super) struct ObserveLayer(Arc<AppState>);

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: Arc::clone(&self.0),
        }
    }
}

impl<S> tower_service::Service<Request> for Observe<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|m| ROUTES.iter().find(|(_, p)| *p == m.as_str()))
            .map_or("other", |(_, p)| *p);
        // A blocking query may take its `wait` beyond the request timeout.
        let wait = change::wait(request.uri().query())
            .ok()
            .flatten()
            .unwrap_or_default();
        let state = Arc::clone(&self.state);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let response = match tokio::time::timeout(state.request_timeout + wait, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::Timeout.into_response(),
            };
            let response = json_errors(response);
            let metrics = state.broker.metrics();
            let decision = crate::metrics::RequestOutcome::of_status(response.status().as_u16());
            metrics.request(route, decision);
            metrics.request_duration(route, started.elapsed());
            Ok(response)
        })
    }
}

/// The router's own refusals (405 from a route, 413 from the body limit, a body that is not
/// JSON) come with an empty or text body; every error keybroker answers is JSON.
fn json_errors(response: Response) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (code, message) = match response.status() {
        _ if json => return response,
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "the request body is larger than the server takes",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "send application/json"),
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read"),
        _ => return response,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}
