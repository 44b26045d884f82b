//! Access control for every route (docs/live.md, "Access"): a bearer token
//! (`Authorization: Bearer`), a user and password (`Authorization: Basic`),
//! or the cookie `/login?token=` sets for a browser. Without credentials
//! the answer is 401 with a fixed body: nothing about cameras or video.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use camfleet_shared::config::HttpAuthConfig;
use std::path::Path;
use std::sync::Arc;

pub const COOKIE: &str = "camfleet_token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("http.auth: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("http.auth: {path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("http.auth: {0} holds no credentials")]
    Empty(String),
}

/// The accepted credentials, read once at start.
#[derive(Default)]
pub struct Credentials {
    tokens: Vec<Vec<u8>>,
    /// `user:password` as Basic auth sends it (before base64).
    users: Vec<Vec<u8>>,
    pub secure_cookie: bool,
}

fn lines(path: &Path) -> Result<Vec<(usize, String)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

impl Credentials {
    pub fn load(config: &HttpAuthConfig, secure_cookie: bool) -> Result<Self, AuthError> {
        let mut c = Self {
            secure_cookie,
            ..Self::default()
        };
        if let Some(path) = &config.token_file {
            for (line, token) in lines(path)? {
                // Tokens go into a cookie and a header: keep them to the
                // characters both allow without quoting.
                if token.len() < 16
                    || !token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
                {
                    return Err(AuthError::Line {
                        path: path.display().to_string(),
                        line,
                        reason: "a token needs at least 16 characters of A-Z a-z 0-9 - . _ ~ + / =",
                    });
                }
                c.tokens.push(token.into_bytes());
            }
            if c.tokens.is_empty() {
                return Err(AuthError::Empty(path.display().to_string()));
            }
        }
        if let Some(path) = &config.users_file {
            for (line, entry) in lines(path)? {
                match entry.split_once(':') {
                    Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                        c.users.push(entry.into_bytes())
                    }
                    _ => {
                        return Err(AuthError::Line {
                            path: path.display().to_string(),
                            line,
                            reason: "expected user:password",
                        })
                    }
                }
            }
            if c.users.is_empty() {
                return Err(AuthError::Empty(path.display().to_string()));
            }
        }
        Ok(c)
    }

    pub fn token_ok(&self, token: &[u8]) -> bool {
        // Every candidate is compared in full: timing says nothing about
        // which one, or how much of it, matched.
        self.tokens
            .iter()
            .fold(false, |ok, t| ok | constant_time_eq(t, token))
    }

    fn basic_ok(&self, user_password: &[u8]) -> bool {
        self.users
            .iter()
            .fold(false, |ok, u| ok | constant_time_eq(u, user_password))
    }

    /// Whether the request carries valid credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(token) = value.strip_prefix("Bearer ") {
                return self.token_ok(token.trim().as_bytes());
            }
            if let Some(b64) = value.strip_prefix("Basic ") {
                return base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .is_ok_and(|up| self.basic_ok(&up));
            }
            return false;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|token| self.token_ok(token.as_bytes()))
    }

    fn challenge(&self) -> HeaderValue {
        let mut schemes = Vec::new();
        if !self.users.is_empty() {
            schemes.push("Basic realm=\"camfleet\"");
        }
        if !self.tokens.is_empty() {
            schemes.push("Bearer realm=\"camfleet\"");
        }
        HeaderValue::from_str(&schemes.join(", ")).expect("ascii")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 401 with a body that names nothing.
pub fn unauthorized(creds: &Credentials) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, creds.challenge()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        "unauthorized\n",
    )
        .into_response()
}

/// Middleware: lets a request through only with valid credentials.
/// `/login` checks its own token; CORS preflights carry no credentials by
/// design and are answered before this runs.
pub async fn require(
    State(creds): State<Arc<Credentials>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/login" || creds.allows(request.headers()) {
        metrics::counter!("camfleet_collector_http_requests_total", "auth" => "ok").increment(1);
        return next.run(request).await;
    }
    metrics::counter!("camfleet_collector_http_requests_total", "auth" => "denied").increment(1);
    unauthorized(&creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(tokens: &str, users: &str) -> Result<Credentials, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tokens");
        let u = dir.path().join("users");
        std::fs::write(&t, tokens).unwrap();
        std::fs::write(&u, users).unwrap();
        Credentials::load(
            &HttpAuthConfig {
                token_file: Some(t),
                users_file: Some(u),
            },
            false,
        )
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_basic_and_cookie_are_accepted_only_when_right() {
        let c = creds("# ops\n0123456789abcdefXYZ\n", "ops:s3cret pass\n").unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("ops:s3cret pass");
        let wrong = base64::engine::general_purpose::STANDARD.encode("ops:s3cret");
        assert!(c.allows(&headers(&[(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdefXYZ"
        )])));
        assert!(c.allows(&headers(&[(
            header::AUTHORIZATION,
            &format!("Basic {basic}")
        )])));
        assert!(c.allows(&headers(&[(
            header::COOKIE,
            "a=b; camfleet_token=0123456789abcdefXYZ"
        )])));
        assert!(!c.allows(&headers(&[])));
        assert!(!c.allows(&headers(&[(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdefXY"
        )])));
        assert!(!c.allows(&headers(&[(
            header::AUTHORIZATION,
            &format!("Basic {wrong}")
        )])));
        assert!(!c.allows(&headers(&[(header::COOKIE, "camfleet_token=nope")])));
        // A wrong Authorization header is not rescued by a cookie.
        assert!(!c.allows(&headers(&[
            (header::AUTHORIZATION, "Bearer bad"),
            (header::COOKIE, "camfleet_token=0123456789abcdefXYZ")
        ])));
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let e = creds("short\n", "ops:x\n").err().unwrap().to_string();
        assert!(
            e.contains("tokens line 1") && e.contains("16 characters"),
            "{e}"
        );
        let e = creds("0123456789abcdefXYZ\n", "\n# c\nno-colon\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("users line 3: expected user:password"), "{e}");
        let e = creds("# nothing\n", "ops:x\n").err().unwrap().to_string();
        assert!(e.contains("holds no credentials"), "{e}");
    }
}
