//! The web dashboard: static files embedded in the binary (`assets/dashboard/`), served at `/`
//! and `/assets/*`. No build step: the files are plain HTML, CSS and an ES module.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

/// The dashboard (single-page app).
#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String)))]
pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/assets/app.js", tag = "dashboard", responses((status = 200, description = "JavaScript module", content_type = "text/javascript", body = String)))]
pub async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], APP_JS)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/assets/style.css", tag = "dashboard", responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
pub async fn style_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLE)
}
