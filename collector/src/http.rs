//! The collector's HTTP endpoints on `[http] listen`:
//!
//! | path       | answers                                                              |
//! |------------|----------------------------------------------------------------------|
//! | `/metrics` | Prometheus text format                                               |
//! | `/healthz` | 200 while the consume loop turns; 503 once it hung for `STALL_LIMIT` |
//! | `/readyz`  | 200 once the consumer joined its group; 503 before and while stopping |
//!
//! Liveness restarts a hung process; readiness only takes it out of a
//! Service's endpoints, so it never depends on Kafka being reachable after
//! the join (a broker outage must not restart every collector at once).

use crate::service::ServiceState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves the endpoints until the task is dropped. The Prometheus handle's
/// upkeep (histogram compaction) runs here too, as the builder's own
/// listener would.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, service: Arc<ServiceState>) {
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, service) = (metrics.clone(), service.clone());
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| {
                let reply = answer(&req, &metrics, &service);
                async move { Ok::<_, Infallible>(reply) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

fn answer<B>(
    req: &Request<B>,
    metrics: &PrometheusHandle,
    service: &ServiceState,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render())))
            .expect("static response parts"),
        "/healthz" => match service.stalled_for() {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(idle) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "consume loop has not turned for {:.0} s\n",
                    idle.as_secs_f64()
                ),
            ),
        },
        "/readyz" => match service.not_ready() {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz\n".into(),
        ),
    }
}
