//! Archive playback as HLS VOD (docs/live.md, "Archive playback"):
//!
//! * `GET /archive/{site}/{camera}/index.m3u8?from=T&to=T` (RFC 3339 or
//!   Unix seconds): a VOD playlist of the segments in that range;
//! * `GET /archive/{site}/{camera}/seg/{yyyy}/{mm}/{dd}/{hh}/{seq}.ts`.

use crate::playback::{vod, PlaybackError, SegmentCatalog};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use camfleet_shared::CameraId;
use std::sync::Arc;

pub type Catalog = Arc<dyn SegmentCatalog>;

#[derive(serde::Deserialize)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// RFC 3339 (`2026-11-30T18:00:00Z`) or Unix seconds -> µs.
fn parse_time(field: &str, value: Option<&str>) -> Result<u64, String> {
    let v = value.ok_or_else(|| format!("`{field}` is required (RFC 3339 or Unix seconds)"))?;
    if let Ok(s) = v.parse::<u64>() {
        return Ok(s.saturating_mul(1_000_000));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_micros()).ok())
        .ok_or_else(|| format!("`{field}`: {v:?} is neither RFC 3339 nor Unix seconds"))
}

fn error(e: PlaybackError) -> Response {
    match e {
        PlaybackError::BadRequest(m) => (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response(),
        PlaybackError::NotFound => (StatusCode::NOT_FOUND, "not in the archive\n").into_response(),
        PlaybackError::Io { .. } => {
            tracing::warn!(error = %e, "archive playback");
            (StatusCode::INTERNAL_SERVER_ERROR, "archive unreadable\n").into_response()
        }
    }
}

pub async fn playlist(
    State(catalog): State<Catalog>,
    Path((site, camera)): Path<(String, String)>,
    Query(range): Query<Range>,
) -> Response {
    let Ok(id) = CameraId::new(&format!("{site}/{camera}")) else {
        return (StatusCode::BAD_REQUEST, "bad camera id\n").into_response();
    };
    let (from, to) = match (
        parse_time("from", range.from.as_deref()),
        parse_time("to", range.to.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(m), _) | (_, Err(m)) => {
            return (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response()
        }
    };
    let listed = tokio::task::spawn_blocking(move || catalog.segments(&id, from, to)).await;
    let segments = match listed {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error(e),
        Err(_) => return error(PlaybackError::NotFound),
    };
    if segments.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no archived video of this camera in that range\n",
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            // The newest hour may still grow.
            (header::CACHE_CONTROL, "max-age=10"),
        ],
        vod::render(&segments),
    )
        .into_response()
}

pub async fn segment(
    State(catalog): State<Catalog>,
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
        return (StatusCode::BAD_REQUEST, "bad camera id\n").into_response();
    };
    let name = format!("{y}/{m}/{d}/{h}/{file}");
    let read = tokio::task::spawn_blocking(move || catalog.read(&id, &name)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error(e),
        Err(_) => return error(PlaybackError::NotFound),
    };
    // The newest segment of a camera is rewritten while it is open
    // (docs/archive.md), so the validator is the content's.
    let etag = format!("\"{}-{:08x}\"", bytes.len(), crc32fast::hash(&bytes));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(axum::body::Body::from(bytes));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        r
    };
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
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
        let e = super::parse_time("to", Some("yesterday")).unwrap_err();
        assert!(e.contains("`to`") && e.contains("yesterday"), "{e}");
        assert!(super::parse_time("from", None)
            .unwrap_err()
            .contains("required"));
    }
}
