//! Who may ask: the checks every request passes before it reaches a handler, and the security
//! headers every answer carries.
//!
//! - **DNS rebinding.** A page on `evil.example` whose name is re-pointed at 127.0.0.1 makes the
//!   browser send `Host: evil.example` to this port. So a request's `Host` must be an IP address
//!   (no name to rebind), `localhost`, or a name given with `--http-host`; and an `Origin`, when
//!   the browser sends one, must be this very host (`http://` or `https://` and the same
//!   `Host`), so that no other site's script can read the answers.
//! - **The token.** Off loopback, `/api/...` and `/metrics` need `Authorization: Bearer
//!   <token>` (the coordinators' shared token). The page and its script hold no data and are
//!   served without it; the page asks for the token when the API answers 401 and keeps it in
//!   the tab's session storage. The token is compared through an HMAC, in constant time.
//! - **Headers.** A strict Content-Security-Policy (`default-src 'self'`: no inline script or
//!   style, no other origin), no framing, no sniffing, no referrer; API answers are not cached.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The policy the page is written for: everything from this origin, nothing inline.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The label the token is MACed over: a candidate is compared by its MAC, never byte by byte.
const TOKEN_LABEL: &[u8] = b"cohort http bearer token";

/// What a request must show.
#[derive(Clone)]
pub(crate) struct Guard {
    /// Host names accepted besides IP addresses and `localhost` (lower case, no port).
    hosts: Arc<[String]>,
    /// The MAC of the token over [`TOKEN_LABEL`], when one is required.
    token_mac: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("hosts", &self.hosts)
            .field("token", &self.token_mac.as_ref().map(|_| "required"))
            .finish()
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(TOKEN_LABEL);
    mac
}

impl Guard {
    /// Accepts IP addresses, `localhost` and `hosts` as `Host`; requires `token` on the data
    /// endpoints when given.
    pub(crate) fn new(hosts: &[String], token: Option<&[u8]>) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            token_mac: token.map(|t| mac(t).finalize().into_bytes().to_vec().into()),
        }
    }

    /// Why this request may not be answered, if it may not.
    fn refuse(&self, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
        let Some(host) = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
        else {
            return Some(plain(
                StatusCode::BAD_REQUEST,
                "a Host header is required\n".to_owned(),
            ));
        };
        if !self.host_allowed(&host) {
            return Some(plain(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not served here (DNS-rebinding protection): use an IP address or localhost, or start cohort serve with --http-host {}\n",
                    host_name(&host)
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin.to_str().ok().is_some_and(|o| {
                let o = o.to_ascii_lowercase();
                o == format!("http://{host}") || o == format!("https://{host}")
            });
            if !same {
                return Some(plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "requests from origin {origin:?} are refused: only this dashboard's own page may call it\n"
                    ),
                ));
            }
        }
        if self.token_mac.is_some() && needs_token(uri.path()) && !self.token_ok(headers) {
            let mut response = plain(
                StatusCode::UNAUTHORIZED,
                "this coordinator's HTTP port is not on loopback: send its token as `Authorization: Bearer <token>`\n".to_owned(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cohort\""),
            );
            return Some(response);
        }
        None
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name == "localhost"
            || name.parse::<IpAddr>().is_ok()
            || self.hosts.iter().any(|h| h == name)
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_mac else {
            return true;
        };
        let Some(candidate) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
        else {
            return false;
        };
        mac(candidate.as_bytes()).verify_slice(expected).is_ok()
    }
}

/// The host of a `Host` header value, without its port (and without an IPv6 literal's
/// brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The data endpoints; the page and its assets hold nothing secret.
fn needs_token(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api" || path == "/metrics"
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The middleware: refuses what [`Guard`] refuses, and adds the security headers.
pub(crate) async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let api = needs_token(request.uri().path());
    let mut response = match guard.refuse(request.uri(), request.headers()) {
        Some(refused) => {
            tracing::info!(path = %request.uri().path(), status = %refused.status(), "http request refused");
            refused
        }
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if api || !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    fn status(guard: &Guard, path: &'static str, pairs: &[(&'static str, &'static str)]) -> u16 {
        guard
            .refuse(&Uri::from_static(path), &headers(pairs))
            .map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn hosts_must_be_addresses_localhost_or_named() {
        let g = Guard::new(&["Dash.Example".to_owned()], None);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:9000",
            "localhost:8080",
            "LOCALHOST",
            "dash.example:443",
        ] {
            let mut map = HeaderMap::new();
            map.insert(
                header::HOST,
                HeaderValue::from_str(ok).unwrap_or_else(|_| unreachable!()),
            );
            assert!(
                g.refuse(&Uri::from_static("/api/status"), &map).is_none(),
                "{ok}"
            );
        }
        assert_eq!(
            status(&g, "/api/status", &[("host", "evil.example:8080")]),
            403
        );
        assert_eq!(status(&g, "/", &[("host", "127.0.0.1.evil.example")]), 403);
        assert_eq!(status(&g, "/metrics", &[]), 400, "no Host");
    }

    #[test]
    fn a_foreign_origin_is_refused() {
        let g = Guard::new(&[], None);
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(
            status(
                &g,
                "/api/status",
                &[host, ("origin", "http://127.0.0.1:8080")]
            ),
            200
        );
        assert_eq!(
            status(
                &g,
                "/api/status",
                &[host, ("origin", "https://127.0.0.1:8080")]
            ),
            200
        );
        assert_eq!(
            status(
                &g,
                "/api/status",
                &[host, ("origin", "http://evil.example")]
            ),
            403
        );
        assert_eq!(
            status(
                &g,
                "/api/status",
                &[host, ("origin", "http://127.0.0.1:9999")]
            ),
            403
        );
        assert_eq!(status(&g, "/api/status", &[host, ("origin", "null")]), 403);
    }

    #[test]
    fn off_loopback_the_data_needs_the_token_and_the_page_does_not() {
        let g = Guard::new(&[], Some(b"0123456789abcdef-token"));
        let host = ("host", "10.0.0.5:8080");
        assert_eq!(status(&g, "/", &[host]), 200);
        assert_eq!(status(&g, "/app.js", &[host]), 200);
        assert_eq!(status(&g, "/api/status", &[host]), 401);
        assert_eq!(status(&g, "/metrics", &[host]), 401);
        assert_eq!(
            status(
                &g,
                "/metrics",
                &[host, ("authorization", "Bearer 0123456789abcdef-token")]
            ),
            200
        );
        assert_eq!(
            status(
                &g,
                "/api/history",
                &[host, ("authorization", "bearer 0123456789abcdef-token")]
            ),
            200
        );
        for wrong in [
            "Bearer 0123456789abcdef-toke",
            "Bearer 0123456789abcdef-token0",
            "Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg==",
            "Bearer",
            "",
        ] {
            let mut map = headers(&[host]);
            map.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(wrong).unwrap_or_else(|_| unreachable!()),
            );
            let refused = g.refuse(&Uri::from_static("/api/status"), &map);
            assert_eq!(refused.map(|r| r.status().as_u16()), Some(401), "{wrong:?}");
        }
    }
}
