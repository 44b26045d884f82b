//! The ops page (one HTML file, no build step), its vendored front-end
//! library (hls.js from npm, installed by scripts/setup; nothing from a
//! CDN) and `/login`, which turns a token into a cookie for the browser.

use super::auth::{self, Credentials};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;

const PAGE: &str = include_str!("../../web/index.html");

pub fn routes(vendor_dir: Option<PathBuf>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    PAGE,
                )
            }),
        )
        .route("/vendor/hls.min.js", get(hls_js))
        .with_state(vendor_dir)
}

async fn hls_js(State(dir): State<Option<PathBuf>>) -> Response {
    let Some(dir) = dir else {
        return (
            StatusCode::NOT_FOUND,
            "http.web_vendor_dir is not set: the page uses native HLS\n",
        )
            .into_response();
    };
    match tokio::fs::read(dir.join("hls.min.js")).await {
        Ok(js) => (
            [
                (header::CONTENT_TYPE, "text/javascript"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            js,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "hls.min.js");
            (
                StatusCode::NOT_FOUND,
                "hls.min.js not found in http.web_vendor_dir\n",
            )
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct Login {
    #[serde(default)]
    token: Option<String>,
}

/// `GET /login?token=T`: with a valid token, sets the session cookie
/// (HttpOnly, SameSite=Strict, Secure under TLS) and sends the browser to
/// the page; otherwise 401. Without auth it just redirects.
pub fn login_route(creds: Option<Arc<Credentials>>) -> Router {
    Router::new().route("/login", get(login)).with_state(creds)
}

async fn login(State(creds): State<Option<Arc<Credentials>>>, Query(q): Query<Login>) -> Response {
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    let Some(creds) = creds else {
        return resp;
    };
    let Some(token) = q.token.filter(|t| creds.token_ok(t.as_bytes())) else {
        return auth::unauthorized(&creds);
    };
    let secure = if creds.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict{secure}",
        auth::COOKIE
    );
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("token characters are checked at load"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
