//! Helpers for the dashboard's tests: a browser-like HTTP client that does not follow
//! redirects, signing in through the form, and reading what a page shows.

use reqwest::{StatusCode, header};

use crate::{TestApp, client_builder};

/// A client that shows every redirect (as a test must see the `303`s) and sends no cookie on
/// its own.
pub fn no_redirects() -> reqwest::Client {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The answer of `POST /ui/login` for `id` and `secret`, with `extra` headers.
pub async fn post_login(
    app: &TestApp,
    id: &str,
    secret: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = no_redirects()
        .post(app.url("/ui/login"))
        .form(&[("client_id", id), ("client_secret", secret)]);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

/// Signs in through the form; returns the session cookie (`name=value`).
pub async fn sign_in(app: &TestApp, id: &str, secret: &str) -> String {
    let r = post_login(app, id, secret, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in of {id}");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// `GET path` with the session `cookie`: the status, `Location` (if any) and body.
pub async fn get(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, Option<String>, String) {
    let r = no_redirects()
        .get(app.url(path))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let location = r
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    (r.status(), location, r.text().await.unwrap())
}

/// `POST path` with the session `cookie`, `form` fields and `extra` headers.
pub async fn post(
    app: &TestApp,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = no_redirects()
        .post(app.url(path))
        .header(header::COOKIE, cookie)
        .form(form);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

/// The anti-forgery token of the first form on a page.
pub fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form with its token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The number a page shows for a batch count (`data-count="name"`).
pub fn count(page: &str, name: &str) -> i64 {
    let marker = format!("data-count=\"{name}\">");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no count {name}"));
    let rest = &page[at + marker.len()..];
    rest[..rest.find('<').unwrap()].parse().unwrap()
}
