//! Archive playback and export over HTTP, from the archive index
//! (docs/live.md, "Archive playback"):
//!
//! * `GET /archive/{site}/{camera}/index.m3u8?from=T&to=T`: VOD playlist;
//! * `GET /archive/{site}/{camera}/seg/{yyyy}/{mm}/{dd}/{hh}/{seq}.ts`: one
//!   segment, byte ranges and strong ETags;
//! * `GET /archive/{site}/{camera}/export.ts?from=T&to=T`: the range as one
//!   MPEG-TS download (the `archive export` code, streamed);
//! * `GET /api/archive/{site}/{camera}?from=T&to=T`: segments and gaps as
//!   JSON, for the page's timeline.
//!
//! `T` is RFC 3339 or Unix seconds (fractions allowed).

use crate::archive::export::RangeExport;
use crate::archive::index::{GapRow, SegmentRow};
use crate::archive::Archive;
use crate::playback::ranges::{self, RangeAnswer};
use crate::playback::{name_of, vod, ArchivePlayback, PlaybackError};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use camfleet_shared::CameraId;
use std::sync::Arc;

#[derive(Clone)]
pub struct ArchiveState {
    pub playback: Arc<ArchivePlayback>,
    /// No auth: shared caches may keep segments (`public`), else `private`.
    pub public_cache: bool,
}

#[derive(serde::Deserialize)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// RFC 3339 (`2026-11-30T18:00:00Z`) or Unix seconds (`1796061600.5`) -> µs.
fn parse_time(field: &str, value: Option<&str>) -> Result<i64, String> {
    let v = value.ok_or_else(|| format!("`{field}` is required (RFC 3339 or Unix seconds)"))?;
    if let Ok(s) = v.parse::<f64>() {
        if s.is_finite() && (0.0..1e11).contains(&s) {
            return Ok((s * 1e6).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_micros())
        .ok_or_else(|| format!("`{field}`: {v:?} is neither RFC 3339 nor Unix seconds"))
}

fn bad(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        format!("{message}\n"),
    )
        .into_response()
}

fn error(e: PlaybackError) -> Response {
    match e {
        PlaybackError::BadRequest(m) => bad(m),
        PlaybackError::NotFound => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "not in the archive\n",
        )
            .into_response(),
        PlaybackError::Archive(_) => {
            tracing::warn!(error = %e, "archive playback");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CACHE_CONTROL, "no-store")],
                "archive unreadable\n",
            )
                .into_response()
        }
    }
}

/// Camera and range of a request, checked.
fn request(site: &str, camera: &str, range: &Range) -> Result<(CameraId, i64, i64), PlaybackError> {
    let id = CameraId::new(&format!("{site}/{camera}"))
        .map_err(|_| PlaybackError::BadRequest("bad camera id".into()))?;
    let from = parse_time("from", range.from.as_deref()).map_err(PlaybackError::BadRequest)?;
    let to = parse_time("to", range.to.as_deref()).map_err(PlaybackError::BadRequest)?;
    crate::playback::check_range(from, to)?;
    Ok((id, from, to))
}

/// What the index holds for a request's camera and range, or the response
/// for a bad request or an unreadable index.
struct Lookup {
    id: CameraId,
    from: i64,
    to: i64,
    segments: Vec<SegmentRow>,
    gaps: Vec<GapRow>,
}

async fn lookup(
    state: &ArchiveState,
    site: &str,
    camera: &str,
    range: &Range,
) -> Result<Lookup, Response> {
    let (id, from, to) = request(site, camera, range).map_err(error)?;
    let (segments, gaps) = state.playback.range(&id, from, to).await.map_err(error)?;
    Ok(Lookup {
        id,
        from,
        to,
        segments,
        gaps,
    })
}

fn nothing_in_range() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "no archived video of this camera in that range\n",
    )
        .into_response()
}

pub async fn playlist(
    State(state): State<ArchiveState>,
    Path((site, camera)): Path<(String, String)>,
    Query(range): Query<Range>,
) -> Response {
    let Lookup { id, segments, .. } = match lookup(&state, &site, &camera, &range).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if segments.is_empty() {
        return nothing_in_range();
    }
    // A range whose segments are all closed only changes when retention
    // deletes; one with the open segment changes with every GOP.
    let cache = if segments.iter().all(|s| s.complete) {
        "max-age=60"
    } else {
        "max-age=2"
    };
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, cache),
        ],
        vod::render(&segments, |s| name_of(&id, &s.path)),
    )
        .into_response()
}

pub async fn segment(
    State(state): State<ArchiveState>,
    Path((site, camera, y, m, d, h, file)): Path<(
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    )>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = CameraId::new(&format!("{site}/{camera}")) else {
        return bad("bad camera id");
    };
    let name = format!("{y}/{m}/{d}/{h}/{file}");
    let (row, bytes) = match state.playback.segment(&id, &name).await {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    // A closed segment's name always means the same bytes (names are
    // first sequence numbers, which never repeat; a replay rewrites the
    // same frames): immutable. The open one is rewritten as it grows.
    let cache = match (row.complete, state.public_cache) {
        (true, true) => "public, max-age=31536000, immutable",
        (true, false) => "private, max-age=31536000, immutable",
        (false, _) => "no-cache",
    };
    let etag = format!("\"{}-{:08x}\"", bytes.len(), crc32fast::hash(&bytes));
    let tag_matches = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    };
    let mut resp = if tag_matches(header::IF_NONE_MATCH) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        // If-Range with another validator: the client's copy is stale,
        // send it all.
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| {
                headers
                    .get(header::IF_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_none_or(|v| v.trim() == etag)
            });
        let len = bytes.len() as u64;
        match ranges::answer(range, len) {
            RangeAnswer::Whole => {
                let mut r = Response::new(axum::body::Body::from(bytes));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
                r
            }
            RangeAnswer::Partial { start, end } => {
                let part = bytes.slice(start as usize..end as usize);
                let mut r = Response::new(axum::body::Body::from(part));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
                        .expect("ascii"),
                );
                r
            }
            RangeAnswer::Unsatisfiable => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                r
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

fn segment_json(id: &CameraId, r: &SegmentRow) -> serde_json::Value {
    serde_json::json!({
        "name": name_of(id, &r.path),
        "start_capture_us": r.start_capture_us, "end_capture_us": r.end_capture_us,
        "first_seq": r.first_seq, "last_seq": r.last_seq, "frames": r.frames,
        "media_duration_us": r.media_duration_us, "bytes": r.bytes, "epoch": r.epoch,
        "width": r.width, "height": r.height, "complete": r.complete,
    })
}

fn gap_json(g: &GapRow) -> serde_json::Value {
    serde_json::json!({
        "first_missing_seq": g.first_missing_seq, "last_missing_seq": g.last_missing_seq,
        "frames": g.frames(), "reason": g.reason.as_str(), "next_capture_us": g.next_capture_us,
    })
}

/// `/api/archive/{site}/{camera}?from=T&to=T`: what the index holds for the
/// range. Time not covered by any segment is a gap in the recording; `gaps`
/// are the runs of frames the archive knows were lost (and why).
pub async fn timeline(
    State(state): State<ArchiveState>,
    Path((site, camera)): Path<(String, String)>,
    Query(range): Query<Range>,
) -> Response {
    let Lookup {
        id,
        from,
        to,
        segments: segs,
        gaps,
    } = match lookup(&state, &site, &camera, &range).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let body = serde_json::json!({
        "camera": id.to_string(), "from_us": from, "to_us": to,
        "segments": segs.iter().map(|r| segment_json(&id, r)).collect::<Vec<_>>(),
        "gaps": gaps.iter().map(gap_json).collect::<Vec<_>>(),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `/archive/{site}/{camera}/export.ts?from=T&to=T`: the range as one
/// MPEG-TS file, trimmed to keyframes and on one timeline (as `archive
/// export`), streamed while it is made: one segment in memory at a time,
/// at most a few muxed segments queued for a slow client.
pub async fn export(
    State(state): State<ArchiveState>,
    Path((site, camera)): Path<(String, String)>,
    Query(range): Query<Range>,
) -> Response {
    let Lookup {
        id,
        from,
        to,
        segments: segs,
        ..
    } = match lookup(&state, &site, &camera, &range).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if segs.is_empty() {
        return nothing_in_range();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let playback = state.playback.clone();
    tokio::spawn(async move {
        let mut out = RangeExport::new(from, to);
        for row in &segs {
            let ts = match playback.archive().get(&row.path).await {
                Ok(Some(b)) => out
                    .segment(row, &b)
                    .map_err(|e| format!("{}: {e}", row.path)),
                Ok(None) => Err(format!(
                    "{} is in the index but not in the archive",
                    row.path
                )),
                Err(e) => Err(e.to_string()),
            };
            let item = match ts {
                Ok(ts) if ts.is_empty() => continue,
                Ok(ts) => Ok(Bytes::from(ts)),
                Err(e) => {
                    // The client sees a cut-off download, never a file that
                    // looks whole.
                    tracing::warn!(error = %e, "archive export over HTTP stopped");
                    Err(std::io::Error::other(e))
                }
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let file = format!(
        "{}_{}_{}.ts",
        id.site(),
        id.camera(),
        chrono::DateTime::from_timestamp_micros(from)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ")
    );
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(
            super::parse_time("from", Some("2026-11-30T18:00:00Z")),
            Ok(1_796_061_600_000_000)
        );
        assert_eq!(super::parse_time("to", Some("5")), Ok(5_000_000));
        assert_eq!(super::parse_time("to", Some("5.25")), Ok(5_250_000));
        let e = super::parse_time("to", Some("yesterday")).unwrap_err();
        assert!(e.contains("`to`") && e.contains("yesterday"), "{e}");
        assert!(super::parse_time("from", None)
            .unwrap_err()
            .contains("required"));
        assert!(super::parse_time("from", Some("NaN")).is_err());
    }
}
