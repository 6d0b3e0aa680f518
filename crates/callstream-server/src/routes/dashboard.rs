//! The dashboard: `GET /` and its two assets, embedded in the binary (nothing is loaded from
//! elsewhere). It uses only the public API, signed in by the session cookie of `POST
//! /v1/session`; its call streams open with stream tokens. `/demo`, the page it replaced, now
//! redirects to it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

const PAGE: &str = include_str!("../../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");

/// Scripts, styles and connections from the gateway's own origin only; no inline script, no
/// framing, no referrer (a call id in a URL stays here).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: always revalidated, never stale after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`: the dashboard.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    summary = "The dashboard",
    description = "Watch, listen to and steer calls and conversations; sign in with an API key or a one-time link (docs/dashboard.md). Every asset is in the binary.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub async fn page() -> Response {
    let mut response = asset(PAGE, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /assets/dashboard.js`.
#[utoipa::path(
    get,
    path = "/assets/dashboard.js",
    tag = "dashboard",
    summary = "The dashboard's script",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String))
)]
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /assets/dashboard.css`.
#[utoipa::path(
    get,
    path = "/assets/dashboard.css",
    tag = "dashboard",
    summary = "The dashboard's style sheet",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String))
)]
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// `/demo`, the page the dashboard replaced: a fragment (`#…`) survives the redirect.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "dashboard",
    summary = "The old demo page: a redirect to the dashboard",
    responses((status = 308, description = "To `/`"))
)]
pub async fn demo() -> Redirect {
    Redirect::permanent("/")
}
