//! The security middleware around the whole router: who may talk to the proxy at all.
//!
//! Checked in this order, before any handler runs:
//! 1. **Host** (DNS rebinding): a web page whose name was re-pointed at 127.0.0.1 still sends its
//!    own name as `Host`. Only loopback names, IP literals the proxy is reachable at, and names in
//!    `BLOCKOPS_ALLOWED_HOSTS` pass. The port is not checked: rebinding is about the name, and a
//!    port check would break `ssh -L 9000:127.0.0.1:8080` and local reverse proxies.
//! 2. **Preflight** (`OPTIONS` with `Access-Control-Request-Method`): answered here, granted only
//!    on `/v1/*` and only to origins listed in `BLOCKOPS_CORS_ORIGINS`.
//! 3. **Origin** (CSRF and drive-by use of the model): a browser sends `Origin` on every
//!    cross-origin write. On every protected path a present `Origin` must be the dashboard's own
//!    (same origin as the request, or a loopback origin on the proxy's port), the tray app's, or
//!    for `/v1/*` one listed in `BLOCKOPS_CORS_ORIGINS`. `chat::parse_chat_body` accepts form
//!    content types for `curl -d`, so without this check any web page could run prompts through a
//!    "simple" cross-origin POST.
//! 4. **API key**: with `BLOCKOPS_API_KEY` set, everything except `/health` and the dashboard's
//!    static files needs `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`),
//!    compared in constant time.
//!
//! Protection is deny-by-default: the open paths are listed, everything else is protected, so a
//! route added later (or an odd spelling of a path) is never open by accident.

use crate::{
    config::Settings,
    error::{ProxyError, Source},
    pipeline::AppState,
};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::net::IpAddr;

/// Origins of the tray app's webview (macOS/Linux use the custom scheme, Windows the http one).
pub const TRAY_ORIGINS: &[&str] = &[
    "tauri://localhost",
    "http://tauri.localhost",
    "https://tauri.localhost",
];

/// Wraps `router` (normally `http::router(state)`) in the guard. Router-level tests apply it the
/// same way the server does.
pub fn protect(router: Router, state: AppState) -> Router {
    router.layer(axum::middleware::from_fn_with_state(state, guard))
}

async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let settings = state.settings.current();
    match check(
        &settings,
        request.method(),
        request.uri(),
        request.headers(),
    ) {
        Verdict::Pass { cors } => {
            let mut response = next.run(request).await;
            if let Some(origin) = cors {
                add_cors_headers(response.headers_mut(), origin);
            }
            response
        }
        Verdict::Preflight(origin, requested_headers) => preflight(origin, requested_headers),
        Verdict::Refuse(error) => {
            // The Messages door answers in Anthropic's error shape, refusals included.
            let messages = crate::http::messages::is_messages_path(request.uri().path());
            let render = |e: ProxyError| {
                if messages {
                    crate::http::messages::error::response(&e)
                } else {
                    e.into_response()
                }
            };
            if error.status == StatusCode::UNAUTHORIZED {
                state.hub.update(|s| s.rejections.unauthorized += 1);
                let mut response = render(error);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"blockops\""),
                );
                return response;
            }
            render(error)
        }
    }
}

/// What the guard decided about one request.
#[derive(Debug)]
pub enum Verdict {
    /// Let it through; with `cors`, the response gets CORS headers for that origin.
    Pass {
        cors: Option<HeaderValue>,
    },
    /// A CORS preflight from an allowed origin: answered by the guard itself.
    Preflight(HeaderValue, Option<HeaderValue>),
    Refuse(ProxyError),
}

/// The pure decision: no I/O, so every rule is unit-tested directly.
pub fn check(
    settings: &Settings,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Verdict {
    let path = uri.path();
    // 1. Host. HTTP/1.1 clients send `Host`; absolute-form requests carry it in the URI. A request
    // with neither is not from a browser, so it cannot be a rebinding attack.
    let host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    if let Some(host) = &host
        && !host_allowed(settings, host)
    {
        return Verdict::Refuse(ProxyError::new(
            StatusCode::FORBIDDEN,
            Source::Client,
            "host_not_allowed",
            format!(
                "requests for host {host:?} are refused (DNS-rebinding defence): use http://127.0.0.1:{port}/ or \
                 http://localhost:{port}/, or add the name to BLOCKOPS_ALLOWED_HOSTS",
                port = settings.port
            ),
        ));
    }
    if is_open(path) {
        return Verdict::Pass { cors: None };
    }
    let v1 = path == "/v1" || path.starts_with("/v1/");
    let origin = headers.get(header::ORIGIN);
    let cors_listed = origin.is_some_and(|o| v1 && listed(&settings.cors_origins, o));

    // 2. Preflight: browsers send no credentials on it, so it is answered before the key check.
    if method == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && let Some(origin) = origin
    {
        if cors_listed {
            return Verdict::Preflight(
                origin.clone(),
                headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
            );
        }
        return Verdict::Refuse(origin_refused(origin, v1));
    }

    // 3. Origin.
    if let Some(origin) = origin
        && !cors_listed
        && !own_origin(settings, host.as_deref(), origin)
    {
        return Verdict::Refuse(origin_refused(origin, v1));
    }

    // 4. API key.
    if let Some(key) = settings.api_key.as_deref() {
        // Anthropic clients send the key as `x-api-key` (Claude Code's ANTHROPIC_API_KEY);
        // either header satisfies BLOCKOPS_API_KEY.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .or_else(|| headers.get("x-api-key").map(HeaderValue::as_bytes));
        match given {
            Some(token) if constant_time_eq(token, key.as_bytes()) => {}
            Some(_) => {
                return Verdict::Refuse(unauthorized(
                    "invalid_api_key",
                    "the API key is wrong: send the proxy's key (BLOCKOPS_API_KEY) as `Authorization: Bearer <key>` or `x-api-key: <key>`",
                ));
            }
            None => {
                return Verdict::Refuse(unauthorized(
                    "missing_api_key",
                    "this proxy requires an API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`) with the value of BLOCKOPS_API_KEY",
                ));
            }
        }
    }
    Verdict::Pass {
        cors: if cors_listed { origin.cloned() } else { None },
    }
}

/// Paths anyone on an allowed host may read: the health check and the dashboard's static files
/// (the page itself asks for the key and sends it on admin calls).
fn is_open(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/ui" | "/favicon.ico") || path.starts_with("/ui/")
}

fn unauthorized(code: &'static str, message: &str) -> ProxyError {
    ProxyError::new(StatusCode::UNAUTHORIZED, Source::Client, code, message)
}

fn origin_refused(origin: &HeaderValue, v1: bool) -> ProxyError {
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let hint = if v1 {
        "a browser app may call /v1/* only if its origin is listed in BLOCKOPS_CORS_ORIGINS"
    } else {
        "the admin API answers only the proxy's own dashboard and the tray app"
    };
    ProxyError::new(
        StatusCode::FORBIDDEN,
        Source::Client,
        "origin_not_allowed",
        format!("requests from the web page at {origin:?} are refused: {hint}"),
    )
}

/// `Bearer <token>`, scheme case-insensitive (RFC 6750 §2.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let token = &rest[start..];
    let end = token.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    Some(&token[..end])
}

/// Compares two byte strings in time that depends only on their lengths, never on where they
/// first differ. Ten lines instead of a dependency: `subtle`'s slice comparison returns early on
/// a length mismatch too, so it would buy nothing here, and the key's length is not the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    // Keeps the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Splits `host[:port]` (IPv6 in brackets) into a lowercase name without a trailing dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, _)) => inside,
            None => rest,
        }
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn host_allowed(settings: &Settings, host: &str) -> bool {
    let name = host_name(host);
    if name == "localhost" {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        // An IP literal cannot be re-pointed by DNS, so it is never a rebinding attack; still,
        // only addresses the proxy can be reached at are accepted.
        if ip.is_loopback() || settings.host.is_unspecified() || ip == settings.host {
            return true;
        }
    }
    settings.allowed_hosts.iter().any(|allowed| {
        let allowed_name = host_name(allowed);
        if allowed.contains(':') && !allowed.starts_with('[') || allowed.contains("]:") {
            // An entry with a port must match exactly.
            allowed.trim().eq_ignore_ascii_case(host.trim())
        } else {
            allowed_name == name
        }
    })
}

/// The dashboard's own origin: the same origin as the request (its `Host`, which has already
/// passed the rebinding check), a loopback origin on the proxy's port, or the tray app.
fn own_origin(settings: &Settings, host: Option<&str>, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if TRAY_ORIGINS.contains(&origin.as_str()) {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    if let Some(host) = host
        && rest == host.trim().to_ascii_lowercase()
    {
        return true;
    }
    let port = settings.port.to_string();
    let bound = match settings.host {
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("{ip}:{port}"),
    };
    rest == format!("127.0.0.1:{port}")
        || rest == format!("localhost:{port}")
        || rest == format!("[::1]:{port}")
        || rest == bound
}

fn listed(origins: &[String], origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

const EXPOSED_HEADERS: &str = "x-request-id, retry-after";

fn add_cors_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
}

fn preflight(origin: HeaderValue, requested_headers: Option<HeaderValue>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    add_cors_headers(h, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    // The origin is trusted by configuration, so whatever headers it asks for are allowed
    // (SDKs add their own `x-stainless-*` and similar); authorization and content-type always.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested_headers.unwrap_or(HeaderValue::from_static("authorization, content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            port: 8080,
            ..Settings::default()
        }
    }

    fn req(
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Method, axum::http::Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        (method, path.parse().unwrap(), h)
    }

    fn verdict(s: &Settings, method: Method, path: &str, headers: &[(&str, &str)]) -> Verdict {
        let (m, u, h) = req(method, path, headers);
        check(s, &m, &u, &h)
    }

    fn refused_code(v: Verdict) -> Option<&'static str> {
        match v {
            Verdict::Refuse(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"\0", b""));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }

    #[test]
    fn hosts_loopback_bound_and_listed_pass_others_are_refused() {
        let mut s = settings();
        s.allowed_hosts = vec!["mybox.lan".into(), "tunnel.example:443".into()];
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST.",
            "localhost:9000", // ssh -L tunnel: any port
            "[::1]:8080",
            "127.0.0.1",
            "mybox.lan:8080",
            "MyBox.lan",
            "tunnel.example:443",
        ] {
            assert!(
                matches!(
                    verdict(&s, Method::GET, "/health", &[("host", ok)]),
                    Verdict::Pass { .. }
                ),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:8080",
            "localhost.evil.example",
            "192.168.1.5:8080", // bound to loopback only
            "tunnel.example:8443",
            "mybox.lan.evil.example",
        ] {
            assert_eq!(
                refused_code(verdict(&s, Method::GET, "/health", &[("host", bad)])),
                Some("host_not_allowed"),
                "{bad}"
            );
        }
        // Bound to every interface: any IP literal (LAN addresses), still no foreign names.
        s.host = "0.0.0.0".parse().unwrap();
        s.api_key = Some("k".into());
        assert!(matches!(
            verdict(&s, Method::GET, "/health", &[("host", "192.168.1.5:8080")]),
            Verdict::Pass { .. }
        ));
        assert_eq!(
            refused_code(verdict(
                &s,
                Method::GET,
                "/health",
                &[("host", "evil.example")]
            )),
            Some("host_not_allowed")
        );
    }

    #[test]
    fn key_is_required_everywhere_but_health_and_the_dashboard_files() {
        let mut s = settings();
        s.api_key = Some("sk-local-123".into());
        let host = ("host", "127.0.0.1:8080");
        for open in ["/health", "/ui/", "/ui/app.js", "/ui", "/"] {
            assert!(
                matches!(
                    verdict(&s, Method::GET, open, &[host]),
                    Verdict::Pass { .. }
                ),
                "{open}"
            );
        }
        for path in [
            "/v1/chat/completions",
            "/v1/models",
            "/metrics",
            "/admin/api/status",
            "/admin/api/config",
            "/%61dmin/api/config",
            "/anything-else",
        ] {
            assert_eq!(
                refused_code(verdict(&s, Method::GET, path, &[host])),
                Some("missing_api_key"),
                "{path}"
            );
            assert_eq!(
                refused_code(verdict(
                    &s,
                    Method::GET,
                    path,
                    &[host, ("authorization", "Bearer sk-local-12")]
                )),
                Some("invalid_api_key"),
                "{path}"
            );
            assert!(matches!(
                verdict(
                    &s,
                    Method::GET,
                    path,
                    &[host, ("authorization", "Bearer sk-local-123")]
                ),
                Verdict::Pass { cors: None }
            ));
        }
        // Without a key, nothing asks for one.
        // Anthropic clients send the key as `x-api-key`.
        let messages = "/v1/messages";
        assert!(matches!(
            verdict(
                &s,
                Method::POST,
                messages,
                &[host, ("x-api-key", "sk-local-123")]
            ),
            Verdict::Pass { cors: None }
        ));
        assert_eq!(
            refused_code(verdict(
                &s,
                Method::POST,
                messages,
                &[host, ("x-api-key", "sk-local-1")]
            )),
            Some("invalid_api_key")
        );
        s.api_key = None;
        assert!(matches!(
            verdict(&s, Method::POST, "/v1/chat/completions", &[host]),
            Verdict::Pass { .. }
        ));
    }

    #[test]
    fn foreign_origins_are_refused_own_and_tray_origins_pass() {
        let mut s = settings();
        s.allowed_hosts = vec!["mybox.lan".into()];
        let host = ("host", "127.0.0.1:8080");
        for own in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "tauri://localhost",
            "http://tauri.localhost",
        ] {
            for path in ["/admin/api/config", "/v1/chat/completions"] {
                assert!(
                    matches!(
                        verdict(&s, Method::PATCH, path, &[host, ("origin", own)]),
                        Verdict::Pass { cors: None }
                    ),
                    "{own} {path}"
                );
            }
        }
        // Same origin through an allowed name.
        assert!(matches!(
            verdict(
                &s,
                Method::PATCH,
                "/admin/api/config",
                &[
                    ("host", "mybox.lan:8080"),
                    ("origin", "http://mybox.lan:8080")
                ]
            ),
            Verdict::Pass { .. }
        ));
        for foreign in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "http://localhost:8080.evil.example",
            "file://",
        ] {
            for (m, path) in [
                (Method::PATCH, "/admin/api/config"),
                (Method::POST, "/admin/api/backend/test"),
                (Method::POST, "/admin/api/cache/purge"),
                (Method::POST, "/v1/chat/completions"),
            ] {
                assert_eq!(
                    refused_code(verdict(&s, m, path, &[host, ("origin", foreign)])),
                    Some("origin_not_allowed"),
                    "{foreign} {path}"
                );
            }
        }
    }

    #[test]
    fn cors_only_for_listed_origins_and_only_on_v1() {
        let mut s = settings();
        s.cors_origins = vec!["https://chat.example".into()];
        s.api_key = Some("k".into());
        let host = ("host", "127.0.0.1:8080");
        let origin = ("origin", "https://chat.example");
        let pre = [
            host,
            origin,
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type, x-stainless-os",
            ),
        ];
        match verdict(&s, Method::OPTIONS, "/v1/chat/completions", &pre) {
            Verdict::Preflight(o, h) => {
                assert_eq!(o, "https://chat.example");
                assert_eq!(h.unwrap(), "authorization, content-type, x-stainless-os");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            refused_code(verdict(&s, Method::OPTIONS, "/admin/api/config", &pre)),
            Some("origin_not_allowed")
        );
        let other_pre = [
            host,
            ("origin", "https://other.example"),
            ("access-control-request-method", "POST"),
        ];
        assert_eq!(
            refused_code(verdict(
                &s,
                Method::OPTIONS,
                "/v1/chat/completions",
                &other_pre
            )),
            Some("origin_not_allowed")
        );
        // The real request still needs the key, then gets the CORS headers.
        assert_eq!(
            refused_code(verdict(
                &s,
                Method::POST,
                "/v1/chat/completions",
                &[host, origin]
            )),
            Some("missing_api_key")
        );
        match verdict(
            &s,
            Method::POST,
            "/v1/chat/completions",
            &[host, origin, ("authorization", "Bearer k")],
        ) {
            Verdict::Pass { cors: Some(o) } => assert_eq!(o, "https://chat.example"),
            v => panic!("{v:?}"),
        }
        // A listed origin is still no way into the admin API.
        assert_eq!(
            refused_code(verdict(
                &s,
                Method::PATCH,
                "/admin/api/config",
                &[host, origin, ("authorization", "Bearer k")]
            )),
            Some("origin_not_allowed")
        );
    }
}
