//! [`SegmentCatalog`] over a local archive directory: the hour directories
//! of the range are listed and each segment's timing is read from its
//! MPEG-TS (cached by size and modification time, so a playlist request
//! reads a file once). Hour granularity: a range selects the whole hours it
//! touches, because the files carry media time, not capture time; the
//! archive index (issue 9) will narrow that to segments.

use super::{ts_scan, ArchivedSegment, PlaybackError, SegmentCatalog};
use bytes::Bytes;
use camfleet_shared::CameraId;
use chrono::{DateTime, Datelike, Timelike, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest range one playlist may cover.
pub const MAX_RANGE_US: u64 = 24 * 3600 * 1_000_000;
const HOUR_US: u64 = 3600 * 1_000_000;

/// (first PTS, last PTS, frames) of a segment, from [`ts_scan::scan`].
type Timing = (u64, u64, u64);

pub struct DirectoryCatalog {
    root: PathBuf,
    /// path -> (len, mtime, timing): a file is scanned again only if it changed.
    scanned: Mutex<HashMap<PathBuf, (u64, u128, Timing)>>,
}

impl DirectoryCatalog {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            scanned: Mutex::new(HashMap::new()),
        }
    }

    fn io(path: &Path, e: impl std::fmt::Display) -> PlaybackError {
        PlaybackError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn describe(
        &self,
        path: &Path,
        name: String,
        hour_start_us: u64,
    ) -> Result<Option<ArchivedSegment>, PlaybackError> {
        let md = std::fs::metadata(path).map_err(|e| Self::io(path, e))?;
        let modified_ns = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let cached = self
            .scanned
            .lock()
            .expect("scan cache")
            .get(path)
            .filter(|(len, m, _)| *len == md.len() && *m == modified_ns)
            .map(|(_, _, s)| *s);
        let scan = match cached {
            Some(s) => s,
            None => {
                let bytes = std::fs::read(path).map_err(|e| Self::io(path, e))?;
                let Some(s) = ts_scan::scan(&bytes) else {
                    tracing::warn!(path = %path.display(), "archive segment without video PES: left out of playback");
                    return Ok(None);
                };
                self.scanned
                    .lock()
                    .expect("scan cache")
                    .insert(path.to_path_buf(), (md.len(), modified_ns, s));
                s
            }
        };
        let (first, last, frames) = scan;
        let span = last.wrapping_sub(first) & ((1 << 33) - 1);
        let frame_ticks = if frames > 1 {
            span / (frames - 1)
        } else {
            3000
        };
        let first_seq = name
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".ts"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Some(ArchivedSegment {
            name,
            first_seq,
            frames,
            first_pts_90k: first,
            duration_s: (span + frame_ticks) as f64 / 90_000.0,
            hour_start_us,
            bytes: md.len(),
            modified_ns,
        }))
    }
}

fn hour_dir(t_us: u64) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp_micros(t_us as i64).unwrap_or_default();
    format!(
        "{:04}/{:02}/{:02}/{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// `yyyy/mm/dd/hh/<digits>.ts` and nothing else (no `..`, no hidden files).
pub fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 5
        && [4usize, 2, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[4]
            .strip_suffix(".ts")
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

impl SegmentCatalog for DirectoryCatalog {
    fn segments(
        &self,
        camera: &CameraId,
        from_us: u64,
        to_us: u64,
    ) -> Result<Vec<ArchivedSegment>, PlaybackError> {
        if to_us <= from_us {
            return Err(PlaybackError::BadRequest(
                "`to` must be after `from`".into(),
            ));
        }
        if to_us - from_us > MAX_RANGE_US {
            return Err(PlaybackError::BadRequest(
                "a playlist covers at most 24 hours".into(),
            ));
        }
        let cam_dir = self.root.join(camera.site()).join(camera.camera());
        let mut out = Vec::new();
        let mut hour = from_us / HOUR_US * HOUR_US;
        while hour < to_us {
            let rel = hour_dir(hour);
            let dir = cam_dir.join(&rel);
            let mut files: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".ts") && !n.starts_with('.'))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Self::io(&dir, e)),
            };
            files.sort();
            for f in files {
                let name = format!("{rel}/{f}");
                if let Some(seg) = self.describe(&dir.join(&f), name, hour)? {
                    out.push(seg);
                }
            }
            hour += HOUR_US;
        }
        Ok(out)
    }

    fn read(&self, camera: &CameraId, name: &str) -> Result<Bytes, PlaybackError> {
        if !valid_name(name) {
            return Err(PlaybackError::BadRequest(format!(
                "bad segment name {name:?}"
            )));
        }
        let path = self
            .root
            .join(camera.site())
            .join(camera.camera())
            .join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PlaybackError::NotFound),
            Err(e) => Err(Self::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_touching_the_disk() {
        assert!(valid_name("2026/11/30/18/00000000000000000015.ts"));
        for bad in [
            "2026/11/30/18/../x.ts",
            "2026/11/30/18/.00015.ts.tmp",
            "2026/11/30/00015.ts",
            "../../etc/11/30/18/1.ts",
            "2026/11/30/18/1.ts/x",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
