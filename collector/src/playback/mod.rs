//! Archive playback as HLS VOD for a time range, straight from the
//! archive's Parquet index (docs/live.md, "Archive playback").
//!
//! ```text
//! GET /archive/<site>/<camera>/index.m3u8?from=..&to=..
//!      -> catalog::select_range (the index of the hours the range touches)
//!      -> VOD playlist (vod.rs)
//! GET /archive/<site>/<camera>/seg/<yyyy>/<mm>/<dd>/<hh>/<first seq>.ts
//!      -> the hour's index row (is it there, is it complete) -> Archive::get
//! ```
//!
//! Works on every archive `archive.root` names (local directory or HDFS)
//! through [`AnyArchive`]: no directory walk of segment files, no reading of
//! timestamps out of MPEG-TS; the index holds capture times, epochs and
//! sequence numbers.

pub mod ranges;
pub mod vod;

use crate::archive::catalog::{self, CatalogError};
use crate::archive::index::{GapRow, SegmentRow};
use crate::archive::{AnyArchive, Archive};
use bytes::Bytes;
use camfleet_shared::CameraId;

/// The longest range one playlist, timeline or export request covers.
pub const MAX_RANGE_US: i64 = 24 * 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    #[error(transparent)]
    Archive(#[from] CatalogError),
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
}

/// Reads the archive for playback. Any collector instance serves any
/// camera's archive, whichever instance consumes it now.
pub struct ArchivePlayback {
    archive: AnyArchive,
}

impl ArchivePlayback {
    pub fn new(archive: AnyArchive) -> Self {
        Self { archive }
    }

    pub fn archive(&self) -> &AnyArchive {
        &self.archive
    }

    /// Segments and gaps of `camera` overlapping `[from_us, to_us)`, in
    /// capture order. A range must be non-empty and at most 24 h long.
    pub async fn range(
        &self,
        camera: &CameraId,
        from_us: i64,
        to_us: i64,
    ) -> Result<(Vec<SegmentRow>, Vec<GapRow>), PlaybackError> {
        check_range(from_us, to_us)?;
        Ok(catalog::select_range(&self.archive, camera, Some(from_us), Some(to_us)).await?)
    }

    /// One segment named `yyyy/mm/dd/hh/<first seq>.ts` below the camera:
    /// its index row and its bytes. A file the index does not list is not
    /// served (it is a leftover or not yet recorded).
    pub async fn segment(
        &self,
        camera: &CameraId,
        name: &str,
    ) -> Result<(SegmentRow, Bytes), PlaybackError> {
        let first_seq = parse_name(name)
            .ok_or_else(|| PlaybackError::BadRequest(format!("bad segment name {name:?}")))?;
        let path = format!("{}/{}/{name}", camera.site(), camera.camera());
        let hour = catalog::hour_dir_of(&path);
        let idx = catalog::load_hour(&self.archive, hour).await?;
        let row = idx
            .segments
            .get(&first_seq)
            .filter(|r| r.path == path)
            .cloned()
            .ok_or(PlaybackError::NotFound)?;
        let bytes = self
            .archive
            .get(&path)
            .await
            .map_err(CatalogError::from)?
            .ok_or(PlaybackError::NotFound)?;
        Ok((row, bytes))
    }
}

pub fn check_range(from_us: i64, to_us: i64) -> Result<(), PlaybackError> {
    if to_us <= from_us {
        return Err(PlaybackError::BadRequest(
            "`to` must be after `from`".into(),
        ));
    }
    if to_us - from_us > MAX_RANGE_US {
        return Err(PlaybackError::BadRequest(
            "a range covers at most 24 hours".into(),
        ));
    }
    Ok(())
}

/// `yyyy/mm/dd/hh/<digits>.ts` and nothing else (no `..`, no hidden files,
/// no index files) -> the first sequence number.
pub fn parse_name(name: &str) -> Option<u64> {
    let parts: Vec<&str> = name.split('/').collect();
    let dated = parts.len() == 5
        && [4usize, 2, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()));
    if !dated {
        return None;
    }
    parts[4]
        .strip_suffix(".ts")
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// The name of a segment below its camera (`path` minus `site/camera/`).
pub fn name_of<'a>(camera: &CameraId, path: &'a str) -> &'a str {
    let prefix_len = camera.site().len() + 1 + camera.camera().len() + 1;
    path.get(prefix_len..).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_touching_the_archive() {
        assert_eq!(
            parse_name("2026/11/30/18/00000000000000000015.ts"),
            Some(15)
        );
        for bad in [
            "2026/11/30/18/../x.ts",
            "2026/11/30/18/.00015.ts.tmp",
            "2026/11/30/18/segments.parquet",
            "2026/11/30/00015.ts",
            "../../etc/11/30/18/1.ts",
            "2026/11/30/18/1.ts/x",
            "2026/11/30/18/99999999999999999999999.ts",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    fn row(hour: &str, first_seq: u64, start_us: i64, complete: bool) -> SegmentRow {
        SegmentRow {
            camera: "s/c".into(),
            first_seq,
            last_seq: first_seq + 14,
            start_capture_us: start_us,
            end_capture_us: start_us + 1_000_000,
            media_duration_us: 1_000_000,
            frames: 15,
            keyframes: 1,
            bytes: 3,
            path: format!("s/c/{hour}/{first_seq:020}.ts"),
            epoch: 1,
            width: 2,
            height: 2,
            complete,
        }
    }

    #[tokio::test]
    async fn a_range_across_an_hour_is_one_timeline_and_only_indexed_files_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let archive = crate::archive::local::LocalArchive::open(root).unwrap();
        // 2026-11-30T18:59:59Z and 19:00:00Z: one second each, either side of the hour.
        let t = 1_796_065_199_000_000;
        for r in [
            row("2026/11/30/18", 0, t, true),
            row("2026/11/30/19", 15, t + 1_000_000, false),
        ] {
            archive
                .put(&r.path, Bytes::from_static(b"ts!"))
                .await
                .unwrap();
            catalog::record_segment(&archive, r, &[]).await.unwrap();
        }
        // A file the index does not list (a leftover).
        archive
            .put(
                "s/c/2026/11/30/19/00000000000000000099.ts",
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        let p = ArchivePlayback::new(AnyArchive::open(root).await.unwrap());
        let cam = CameraId::new("s/c").unwrap();
        // 18:59:59.5 .. 19:00:00.5 touches both hours.
        let (segs, _) = p.range(&cam, t + 500_000, t + 1_500_000).await.unwrap();
        assert_eq!(
            segs.iter().map(|s| s.first_seq).collect::<Vec<_>>(),
            [0, 15]
        );
        let text = vod::render(&segs, |s| name_of(&cam, &s.path));
        assert!(!text.contains("DISCONTINUITY"), "{text}");
        assert!(
            text.contains("seg/2026/11/30/18/00000000000000000000.ts\n"),
            "{text}"
        );
        let (r, bytes) = p
            .segment(&cam, "2026/11/30/19/00000000000000000015.ts")
            .await
            .unwrap();
        assert!(!r.complete);
        assert_eq!(&bytes[..], b"ts!");
        assert!(matches!(
            p.segment(&cam, "2026/11/30/19/00000000000000000099.ts")
                .await,
            Err(PlaybackError::NotFound)
        ));
        // Only the later hour.
        let (segs, _) = p.range(&cam, t + 1_200_000, t + 9_000_000).await.unwrap();
        assert_eq!(segs.len(), 1);
    }

    #[test]
    fn ranges_are_bounded() {
        assert!(check_range(0, 1).is_ok());
        assert!(check_range(1, 1).is_err());
        assert!(check_range(0, MAX_RANGE_US + 1).is_err());
    }
}
