//! The collector's HTTP server on `[http] listen`: `/metrics`, live HLS,
//! the ops page and its JSON APIs (docs/live.md). Plain HTTP, or HTTPS
//! with rustls when `[http.tls]` is set; every route but the probes
//! (`/healthz`, `/readyz`) behind [`auth::require`] when `[http.auth]` is set.
//! The page's one write, `POST /api/labels`, is in `label_routes`.
//!
//! Routes are grouped per feature (`live_routes`, `page`); [`router`]
//! joins them, so another feature adds its own group here and nothing else.

pub mod archive_routes;
pub mod auth;
pub mod label_routes;
pub mod live_routes;
pub mod page;

use crate::live::LiveHub;
use crate::service::ServiceState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use camfleet_shared::config::HttpConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("http.tls: {0}")]
    Tls(String),
}

/// What the routes serve.
pub struct Served {
    pub metrics: PrometheusHandle,
    /// Liveness and readiness of the consume loop (`/healthz`, `/readyz`).
    pub service: Arc<ServiceState>,
    pub live: Option<Arc<LiveHub>>,
    /// Archive playback (HLS VOD), timeline and export; None = not offered.
    pub playback: Option<Arc<crate::playback::ArchivePlayback>>,
    /// Ops labels from the page (`POST /api/labels`); None = this collector
    /// cannot label (no `[inference.embedding]`): the route says so.
    pub labels: Option<Arc<crate::learn::label::Labeller<crate::archive::AnyArchive>>>,
}

/// The running server.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Builds the router for `config` (also used by tests without a socket).
pub fn router(config: &HttpConfig, served: Served) -> Result<Router, HttpError> {
    let metrics = served.metrics.clone();
    let mut app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    );
    if let Some(hub) = served.live {
        let state = live_routes::LiveState {
            hub: hub.clone(),
            public_cache: config.auth.is_none(),
        };
        let live = Router::new()
            .route(
                "/live/{site}/{camera}/index.m3u8",
                get(live_routes::playlist),
            )
            .route(
                "/live/{site}/{camera}/seg/{file}",
                get(live_routes::segment),
            )
            .route("/live/{site}/{camera}/part/{file}", get(live_routes::part))
            .route("/api/cameras", get(live_routes::cameras))
            .route("/api/detections", get(live_routes::detections))
            .with_state(state);
        let labels = Router::new()
            .route("/api/labels", post(label_routes::post_label))
            .with_state(label_routes::LabelState {
                labeller: served.labels,
                hub: hub.clone(),
            });
        app = app
            .merge(live)
            .merge(labels)
            .merge(page::routes(config.web_vendor_dir.clone()));
    }
    if let Some(playback) = served.playback {
        let state = archive_routes::ArchiveState {
            playback,
            public_cache: config.auth.is_none(),
        };
        let archive = Router::new()
            .route(
                "/archive/{site}/{camera}/index.m3u8",
                get(archive_routes::playlist),
            )
            .route(
                "/archive/{site}/{camera}/seg/{y}/{m}/{d}/{h}/{file}",
                get(archive_routes::segment),
            )
            .route(
                "/archive/{site}/{camera}/export.ts",
                get(archive_routes::export),
            )
            .route(
                "/api/archive/{site}/{camera}",
                get(archive_routes::timeline),
            )
            .with_state(state);
        app = app.merge(archive);
    }
    let creds = match &config.auth {
        Some(a) => Some(Arc::new(auth::Credentials::load(a, config.tls.is_some())?)),
        None => None,
    };
    app = app.merge(page::login_route(creds.clone()));
    if let Some(creds) = creds {
        app = app.layer(middleware::from_fn_with_state(creds, auth::require));
    }
    // Probes come from the kubelet or a load balancer without credentials,
    // and say nothing about cameras or video: outside auth.
    app = app.merge(health_routes(served.service));
    if !config.cors_allow_origins.is_empty() {
        let origins = Arc::new(config.cors_allow_origins.clone());
        app = app.layer(middleware::from_fn_with_state(origins, cors));
    }
    Ok(app)
}

/// `/healthz`: 200 while the consume loop turns, 503 once it hung (liveness:
/// restart). `/readyz`: 200 once the consumer joined its group, 503 before
/// and while stopping (readiness: out of a Service's endpoints; it never
/// depends on Kafka being reachable after the join, so a broker outage does
/// not restart every collector at once).
fn health_routes(service: Arc<ServiceState>) -> Router {
    let ready = service.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let service = service.clone();
                async move {
                    match service.stalled_for() {
                        None => (StatusCode::OK, "ok\n".to_string()),
                        Some(idle) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "consume loop has not turned for {:.0} s\n",
                                idle.as_secs_f64()
                            ),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let service = ready.clone();
                async move {
                    match service.not_ready() {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}

/// CORS for the configured origins. Preflights are answered here, before
/// auth: browsers send them without credentials.
async fn cors(State(origins): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = origin.as_ref().and_then(|o| {
        if origins.iter().any(|a| a == "*") {
            Some(HeaderValue::from_static("*"))
        } else if origins.iter().any(|a| a == o) {
            HeaderValue::from_str(o).ok()
        } else {
            None
        }
    });
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(allowed) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("ETag, Content-Length"),
        );
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Range, If-None-Match"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    resp
}

/// Binds `config.listen` and serves until the process ends.
pub async fn start(config: &HttpConfig, served: Served) -> Result<HttpServer, HttpError> {
    // Histograms are summarised on upkeep (the exporter's own listener
    // did this; we serve /metrics ourselves).
    let metrics = served.metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });
    let app = router(config, served)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let task = match &config.tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "http server stopped");
            }
        }),
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            tokio::spawn(serve_tls(listener, acceptor, app))
        }
    };
    tracing::info!(%local_addr, tls = config.tls.is_some(), auth = config.auth.is_some(), "http listening");
    Ok(HttpServer { local_addr, task })
}

fn tls_acceptor(
    tls: &camfleet_shared::config::HttpTlsConfig,
) -> Result<tokio_rustls::TlsAcceptor, HttpError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| HttpError::Tls(format!("cert_file {}: {e}", tls.cert_file.display())))?;
    if certs.is_empty() {
        return Err(HttpError::Tls(format!(
            "cert_file {}: no certificate",
            tls.cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| HttpError::Tls(format!("key_file {}: {e}", tls.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HttpError::Tls(format!("certificate and key: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "http accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                _ => {
                    tracing::debug!(%peer, "tls handshake failed");
                    metrics::counter!("camfleet_collector_http_tls_handshakes_failed_total")
                        .increment(1);
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
