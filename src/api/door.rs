//! The main API as a door: its [`DoorSpec`] (route names from [`ROUTES`], the JSON timeout,
//! blocking queries' `wait`, which bodies may carry material).

use axum::response::IntoResponse;

use super::{ApiError, AppState, ROUTES, change};
use crate::door::observe::{DoorSpec, Observe};

/// The main API as a door.
pub(super) fn api_door() -> DoorSpec {
    DoorSpec {
        door: crate::identity::Door::Api,
        route_of,
        timed_out: || ApiError::Timeout.into_response(),
        json_errors: true,
        extra_wait: |query| change::wait(query).ok().flatten().unwrap_or_default(),
        carries_material: super::carries_material,
    }
}

/// An `Observe` for the main API's router.
pub(super) fn api<S>(inner: S, state: &AppState) -> Observe<S> {
    Observe::new(
        inner,
        state.broker.shared_metrics(),
        state.request_timeout,
        api_door(),
    )
}

/// The template in [`ROUTES`] that `path` falls under (whatever the method: a 405 counts
/// against its route), or `other`. A `{…}` segment stands for any one non-empty segment, as in
/// the router.
pub(super) fn route_of(path: &str) -> &'static str {
    let templates = || ROUTES.iter().map(|(_, template)| *template);
    // Most requests name a route without a placeholder: equal strings first.
    templates()
        .find(|template| *template == path)
        .or_else(|| templates().find(|template| fits(template, path)))
        .unwrap_or("other")
}

fn fits(template: &str, path: &str) -> bool {
    // Segment by segment: a `{placeholder}` segment is any one non-empty segment.
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                if ps.is_empty() {
                    return false;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ROUTES, route_of};

    #[test]
    fn requests_are_named_by_their_route_template() {
        for (_, template) in ROUTES {
            let path = template
                .replace("{name}", "db-prod")
                .replace("{team}", "payments")
                .replace("{id}", "7");
            assert_eq!(route_of(&path), *template);
        }
        assert_eq!(route_of("/v1/resolve"), "/v1/resolve");
        assert_eq!(route_of("/v1/credentials"), "/v1/credentials");
        assert_eq!(route_of("/v1/credentials/db"), "/v1/credentials/{name}");
        assert_eq!(
            route_of("/v1/credentials/db/material"),
            "/v1/credentials/{name}/material"
        );
        // Not a route: the label stays in a closed vocabulary whatever the caller sends.
        for path in [
            "/v1/credentials//material",
            "/v1/credentials/",
            "/v1/resolve/",
            "/v1/resolve/x",
            "/v1",
            "/",
            "",
            "/V1/resolve",
            "/v1/credentials/a/b/material",
        ] {
            assert_eq!(route_of(path), "other", "{path:?}");
        }
    }
}
