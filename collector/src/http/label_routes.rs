//! `POST /api/labels` (JSON `{"id": DETECTION_ID, "real": true|false}`):
//! the page's "real" / "false" buttons. Exactly `camfleet-collector label`
//! ([`Labeller::label`]): same checks, same record on the labels topic
//! (source `ops` once the table writer files it).
//!
//! Answers: 200 with what was published; 400 for a body that is not that
//! JSON or a malformed id; 404 for an id not in the detections tables, or
//! when this collector has no `[inference.embedding]`; 503 when the archive
//! or Kafka did not answer (nothing was published: try again). Every error
//! is `{"error": "..."}` naming why. Behind the same auth as every route;
//! cross-site requests cannot reach it (the cookie is SameSite=Strict, the
//! body must be `application/json`, and CORS preflights allow only GET).

use crate::archive::AnyArchive;
use crate::learn::dataset::parse_detection_id;
use crate::learn::label::{LabelError, Labeller};
use crate::live::LiveHub;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

#[derive(Clone)]
pub struct LabelState {
    /// None: this collector cannot label (no `[inference.embedding]`).
    pub labeller: Option<Arc<Labeller<AnyArchive>>>,
    /// The detections the page was shown: an id among them was published,
    /// so it is worth waiting for the tables to catch up.
    pub hub: Arc<LiveHub>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// `<site>/<camera>:<epoch>:<seq>:<index>`, the object's `id` on
    /// `camfleet.detections.v1`.
    id: String,
    /// true: a real object; false: a false positive.
    real: bool,
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn status_of(e: &LabelError) -> StatusCode {
    match e {
        LabelError::BadId(_) => StatusCode::BAD_REQUEST,
        LabelError::Unknown { .. } | LabelError::NotEnabled => StatusCode::NOT_FOUND,
        LabelError::Dataset(_) | LabelError::Kafka(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub async fn post_label(
    State(state): State<LabelState>,
    body: Result<Json<LabelRequest>, JsonRejection>,
) -> Response {
    let outcome = |result: &'static str| {
        metrics::counter!("camfleet_collector_http_labels_total", "result" => result).increment(1);
    };
    let Some(labeller) = state.labeller else {
        outcome("refused");
        return error(StatusCode::NOT_FOUND, LabelError::NotEnabled.to_string());
    };
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => {
            outcome("refused");
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be JSON {{\"id\": DETECTION_ID, \"real\": true|false}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    let labelled = if seen_live(&state.hub, &req.id) {
        labeller.label_published(&req.id, req.real).await
    } else {
        labeller.label(&req.id, req.real).await
    };
    match labelled {
        Ok(done) => {
            outcome("labelled");
            tracing::info!(id = %done.detection_id, real = done.real, topic = %done.topic, "labelled from the page");
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(done),
            )
                .into_response()
        }
        Err(e) => {
            let status = status_of(&e);
            outcome(if status.is_client_error() {
                "refused"
            } else {
                "failed"
            });
            if status.is_server_error() {
                tracing::warn!(id = %req.id, error = %e, "label from the page failed");
            }
            error(status, e.to_string())
        }
    }
}

/// Whether `id` is an object of a detection record the hub still holds.
fn seen_live(hub: &LiveHub, id: &str) -> bool {
    let Ok((camera, ..)) = parse_detection_id(id) else {
        return false;
    };
    hub.detections_since(&camera, 0).iter().any(|d| {
        serde_json::from_str::<serde_json::Value>(&d.json).is_ok_and(|r| {
            r["objects"]
                .as_array()
                .is_some_and(|objects| objects.iter().any(|o| o["id"] == id))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use camfleet_shared::config::CollectorConfig;
    use tower::ServiceExt;

    async fn call(state: LabelState, content_type: &str, body: &str) -> (StatusCode, String) {
        let app = axum::Router::new()
            .route("/api/labels", axum::routing::post(post_label))
            .with_state(state);
        let resp = app
            .oneshot(
                Request::post("/api/labels")
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error");
        (status, j["error"].as_str().unwrap().to_string())
    }

    /// Every refusal happens before anything is published: no broker is
    /// needed (the bootstrap address has none), the archive is empty.
    #[tokio::test]
    async fn refusals_answer_4xx_naming_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let cfg = CollectorConfig::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n[archive]\nroot = \"{root}\"\n\
             [inference]\nmodel = \"m.toml\"\n[inference.embedding]\nmodel = \"e.toml\"\n[live]\n"
        ))
        .unwrap();
        let hub = LiveHub::new(cfg.live.clone().unwrap());
        let json = "application/json";

        let off = LabelState {
            labeller: None,
            hub: hub.clone(),
        };
        let (status, error) = call(off, json, r#"{"id":"s/c:1:2:0","real":true}"#).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(error.contains("[inference.embedding]"), "{error}");

        let archive = AnyArchive::open(root).await.unwrap();
        let on = LabelState {
            labeller: Some(Arc::new(Labeller::new(&cfg, archive).unwrap())),
            hub,
        };
        for (content_type, body, want, text) in [
            (
                json,
                r#"{"id":"s/c:1:2","real":true}"#,
                400,
                "<site>/<camera>:<epoch>:<seq>:<index>",
            ),
            (
                json,
                r#"{"id":"s/c:1:two:0","real":false}"#,
                400,
                "seq \"two\" is not a number",
            ),
            (
                json,
                r#"{"id":"s/c:1:2:0","real":true}"#,
                404,
                "no detection s/c:1:2:0",
            ),
            (
                json,
                r#"{"id":"s/c:1:2:0","real":"yes"}"#,
                400,
                "body must be JSON",
            ),
            (
                json,
                r#"{"id":"s/c:1:2:0","real":true,"x":1}"#,
                400,
                "unknown field `x`",
            ),
            (
                "text/plain",
                r#"{"id":"s/c:1:2:0","real":true}"#,
                400,
                "Content-Type",
            ),
        ] {
            let (status, error) = call(on.clone(), content_type, body).await;
            assert_eq!(status.as_u16(), want, "{body}: {error}");
            assert!(error.contains(text), "{body}: {error}");
        }
    }
}
