//! Around every door's router: the request timeout, JSON bodies for the router's own
//! refusals (main API), the per-door, per-route request counter and duration, and the close of
//! a connection whose request may have carried material. Every door — the API, the
//! Vault-compatible API, the egress proxy, the CCP API — is wrapped by this one service; what
//! differs per door is its [`DoorSpec`].
//!
//! A hand-written service around the whole router, not a `Router::layer`: a layer wraps every
//! route in one more boxed service, cloned on every request, and `axum::middleware::from_fn`
//! boxes once more — the cache-hit profile showed both (docs/PERFORMANCE.md). So the route is
//! named here from the path, before routing, by [`route_of`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// How one door is observed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DoorSpec {
    /// Which door: its name is the `door` label.
    pub door: crate::identity::Door,
    /// The `route` label of a path, from a closed vocabulary.
    pub route_of: fn(&str) -> &'static str,
    /// The answer when the request timeout passes, in the door's dialect.
    pub timed_out: fn() -> Response,
    /// Whether the router's own refusals get the API's JSON error bodies.
    pub json_errors: bool,
    /// Time a request may take beyond the timeout, from its query (the main API's blocking
    /// queries: their `wait`).
    pub extra_wait: fn(Option<&str>) -> std::time::Duration,
    /// Whether a request with a body to this route may carry material: its answer closes the
    /// connection (`Connection: close`). A kept-alive connection's receive buffers — rustls'
    /// deframer, hyper's read buffer — are reused, never freed, while it lives, and keep the
    /// request's bytes until later requests happen to overwrite them; a closed connection's are
    /// freed, which wipes them (the zeroizing allocator, docs/THREATS.md row 29).
    pub carries_material: fn(&axum::http::Method, &str) -> bool,
}

/// No request to the door carries material.
pub(crate) fn never(_: &axum::http::Method, _: &str) -> bool {
    false
}

/// No request waits beyond the timeout.
pub(crate) fn no_wait(_: Option<&str>) -> std::time::Duration {
    std::time::Duration::ZERO
}

/// The service around a door's router.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    metrics: Arc<crate::metrics::Metrics>,
    timeout: std::time::Duration,
    spec: DoorSpec,
}

impl<S> Observe<S> {
    pub(crate) fn new(
        inner: S,
        metrics: Arc<crate::metrics::Metrics>,
        timeout: std::time::Duration,
        spec: DoorSpec,
    ) -> Self {
        Self {
            inner,
            metrics,
            timeout,
            spec,
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
        let spec = self.spec;
        let route = (spec.route_of)(request.uri().path());
        let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        let close = has_body && (spec.carries_material)(request.method(), route);
        // A blocking query may take its `wait` beyond the request timeout.
        let wait = (spec.extra_wait)(request.uri().query());
        let metrics = Arc::clone(&self.metrics);
        let timeout = self.timeout + wait;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let response = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => (spec.timed_out)(),
            };
            let mut response = if spec.json_errors {
                json_errors(response)
            } else {
                response
            };
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let decision = crate::metrics::RequestOutcome::of_status(response.status().as_u16());
            metrics.request(spec.door.name(), route, decision);
            metrics.request_duration(spec.door.name(), route, started.elapsed());
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
