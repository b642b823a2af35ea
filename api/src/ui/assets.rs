//! The dashboard's vendored assets, built into the binary (the dashboard works offline).

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::{PagePath, layout};

const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
];

/// `GET /ui/assets/{name}`.
pub(crate) async fn serve(PagePath(name): PagePath) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return layout::not_found("asset");
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
