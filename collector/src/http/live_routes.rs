//! Live HLS and the page's JSON APIs over [`LiveHub`].
//!
//! * `GET /live/{site}/{camera}/index.m3u8[?_HLS_msn=M[&_HLS_part=P]]`:
//!   the live playlist; with `_HLS_msn` the request blocks until the
//!   playlist holds that segment (or part), as LL-HLS players expect.
//! * `GET /live/{site}/{camera}/seg/{epoch}-{seq}.ts` and
//!   `.../part/{epoch}-{seq}.{n}.ts`: immutable; a part the preload hint
//!   names is waited for.
//! * `GET /api/cameras`, `GET /api/detections?camera=&since_us=`.
//!
//! A camera this instance does not consume answers 404 with a hint: its
//! Kafka partition belongs to another instance of the group.

use crate::live::{playlist, LiveHub};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use camfleet_shared::CameraId;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct LiveState {
    pub hub: Arc<LiveHub>,
    /// Responses may be kept by shared caches (no auth in front of them).
    pub public_cache: bool,
}

#[derive(serde::Deserialize)]
pub struct BlockQuery {
    #[serde(rename = "_HLS_msn")]
    msn: Option<u64>,
    #[serde(rename = "_HLS_part")]
    part: Option<usize>,
}

/// A camera not served here: 307 to the instance that announces it
/// (`[live.fleet] announce_url`, same path and query), else 404 with a hint.
fn not_here(hub: &LiveHub, camera: &str, uri: &Uri) -> Response {
    if let Some(owner) = hub.fleet.get().and_then(|f| f.owner_of(camera)) {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(location) = HeaderValue::from_str(&format!("{owner}{path}")) {
            metrics::counter!("camfleet_collector_live_redirects_total").increment(1);
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response();
        }
    }
    let here: Vec<String> = hub
        .cameras()
        .keys()
        .map(|c| c.as_str().to_string())
        .collect();
    let body = serde_json::json!({
        "error": format!("camera {camera} is not live on this collector"),
        "hint": "each camera is served by the collector instance that consumes its Kafka \
                 partition; with [live.fleet] announce_url set on every instance this \
                 answer is a redirect to it; else ask the others (their /api/cameras), \
                 or check that the camera sends video",
        "cameras_here": here,
    });
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

fn camera_id(site: &str, camera: &str) -> Option<CameraId> {
    CameraId::new(&format!("{site}/{camera}")).ok()
}

/// Waits (bounded) until `ready` holds; false on timeout.
async fn wait_until(hub: &LiveHub, mut ready: impl FnMut(&LiveHub) -> bool) -> bool {
    let mut rx = hub.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(hub.config.block_timeout_ms);
    loop {
        if ready(hub) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return ready(hub),
        }
    }
}

pub async fn playlist(
    State(st): State<LiveState>,
    Path((site, camera)): Path<(String, String)>,
    Query(q): Query<BlockQuery>,
    uri: Uri,
) -> Response {
    let Some(id) = camera_id(&site, &camera) else {
        return (StatusCode::BAD_REQUEST, "bad camera id\n").into_response();
    };
    let hub = &st.hub;
    if let Some(msn) = q.msn {
        let next = match hub.cameras().get(&id) {
            Some(c) => c.next_msn(),
            None => return not_here(hub, id.as_str(), &uri),
        };
        // RFC 8216bis 6.2.5.2: more than two segments ahead is an error.
        if msn > next + 2 {
            return (StatusCode::BAD_REQUEST, "_HLS_msn too far ahead\n").into_response();
        }
        wait_until(hub, |h| {
            h.cameras().get(&id).is_none_or(|c| c.has(msn, q.part))
        })
        .await;
    }
    let text = {
        let cameras = hub.cameras();
        let Some(live) = cameras.get(&id) else {
            drop(cameras);
            return not_here(hub, id.as_str(), &uri);
        };
        playlist::render(live, hub.config.playlist_segments)
    };
    match text {
        // The camera is consumed here but no IDR came yet.
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no segment yet: waiting for the camera's next keyframe\n",
        )
            .into_response(),
        Some(text) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/vnd.apple.mpegurl"),
                ),
                // Playlists change with every part: a cache may keep one
                // for at most a second.
                (header::CACHE_CONTROL, HeaderValue::from_static("max-age=1")),
            ],
            text,
        )
            .into_response(),
    }
}

/// Serves immutable media bytes with a strong validator.
fn media(st: &LiveState, headers: &HeaderMap, etag: String, bytes: Bytes) -> Response {
    let etag = format!("\"{etag}-{}\"", bytes.len());
    let cache = if st.public_cache {
        "public, max-age=31536000, immutable"
    } else {
        "private, max-age=31536000, immutable"
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        r
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    resp
}

pub async fn segment(
    State(st): State<LiveState>,
    Path((site, camera, file)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (Some(id), Some(name)) = (camera_id(&site, &camera), file.strip_suffix(".ts")) else {
        return (StatusCode::BAD_REQUEST, "bad segment name\n").into_response();
    };
    let found = {
        let cameras = st.hub.cameras();
        let Some(live) = cameras.get(&id) else {
            drop(cameras);
            return not_here(&st.hub, id.as_str(), &uri);
        };
        live.segment(name).map(|s| s.bytes.clone())
    };
    match found {
        Some(bytes) => media(&st, &headers, name.to_string(), bytes),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such segment (it may have left the live window)\n",
        )
            .into_response(),
    }
}

pub async fn part(
    State(st): State<LiveState>,
    Path((site, camera, file)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let parsed = file.strip_suffix(".ts").and_then(|stem| {
        let (name, index) = stem.rsplit_once('.')?;
        Some((name.to_string(), index.parse::<usize>().ok()?))
    });
    let (Some(id), Some((name, index))) = (camera_id(&site, &camera), parsed) else {
        return (StatusCode::BAD_REQUEST, "bad part name\n").into_response();
    };
    let lookup = |hub: &LiveHub| -> Result<Bytes, bool> {
        match hub.cameras().get(&id) {
            None => Err(false),
            Some(live) => live.part(&name, index).map(|p| p.bytes.clone()),
        }
    };
    if st.hub.cameras().get(&id).is_none() {
        return not_here(&st.hub, id.as_str(), &uri);
    }
    let mut found = lookup(&st.hub);
    if found == Err(true) {
        // The preload hint's part: answer when it exists.
        wait_until(&st.hub, |h| lookup(h) != Err(true)).await;
        found = lookup(&st.hub);
    }
    match found {
        Ok(bytes) => media(&st, &headers, format!("{name}.{index}"), bytes),
        Err(_) => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such part\n",
        )
            .into_response(),
    }
}

pub async fn cameras(State(st): State<LiveState>) -> Response {
    let now = Instant::now();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let mut list: Vec<serde_json::Value> = st
        .hub
        .cameras()
        .iter()
        .map(|(id, live)| {
            let (health, age) = live.health(now);
            serde_json::json!({
                "camera": id.as_str(),
                "partition": live.partition,
                "live": format!("/live/{}/{}/index.m3u8", id.site(), id.camera()),
                "health": health,
                "last_frame_age_ms": age.map(|a| a.as_millis() as u64),
                "capture_age_ms": now_us.saturating_sub(health.last_capture_us) / 1000,
                "fleet": st.hub.fleet.get().and_then(|f| f.camera_status(id.as_str())),
            })
        })
        .collect();
    list.sort_by(|a, b| a["camera"].as_str().cmp(&b["camera"].as_str()));
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "cameras": list,
            "detections_available": st.hub.detections_listening(),
            "part_target_ms": st.hub.config.part_target_ms,
            // null: no [live.fleet]; false: configured, broker not reached.
            "fleet_connected": st.hub.fleet.get().map(|f| f.connected()),
            "elsewhere": st.hub.fleet.get().map(|f| f.elsewhere()
                .into_iter()
                .map(|(camera, url)| serde_json::json!({"camera": camera, "url": url}))
                .collect::<Vec<_>>()).unwrap_or_default(),
        })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct DetectionsQuery {
    camera: String,
    #[serde(default)]
    since_us: u64,
}

pub async fn detections(State(st): State<LiveState>, Query(q): Query<DetectionsQuery>) -> Response {
    let Ok(id) = CameraId::new(&q.camera) else {
        return (StatusCode::BAD_REQUEST, "bad camera id\n").into_response();
    };
    let entries = st.hub.detections_since(&id, q.since_us);
    // The records are passed through as published (docs/detections.schema.json).
    let mut body = String::from("{\"available\":");
    body.push_str(if st.hub.detections_listening() {
        "true"
    } else {
        "false"
    });
    body.push_str(",\"records\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push_str("]}");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
