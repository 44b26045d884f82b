//! The index on an [`Archive`]: reading and rewriting a camera-hour's
//! tables, and walking the archive by camera and time.
//!
//! Write protocol of an hour's index (docs/archive.md, "The index"): read
//! the current tables, upsert the new rows (a replayed segment or gap keeps
//! its key, so it replaces its row), and put each changed table with the
//! archive's atomic put (tmp -> durable -> rename). Gaps are written before
//! segments, so a reader that sees a segment after a gap also sees the gap.
//! The collector writes a segment, then its index rows, and only then lets
//! the watermark and the Kafka commit pass the segment: a crash in between
//! replays the segment, which rewrites the same file and the same rows.

use super::index::{self, GapRow, HourIndex, IndexError, SegmentRow};
use super::{Archive, ArchiveError};
use crate::segmenter::SegmentFrame;
use bytes::Bytes;
use camfleet_shared::CameraId;
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// One hour of one camera: its directory relative to the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HourDir {
    /// `site/camera/yyyy/mm/dd/hh`.
    pub dir: String,
    /// Start of the hour, µs since the epoch (UTC).
    pub start_us: i64,
}

pub const HOUR_US: i64 = 3_600_000_000;

impl HourDir {
    pub fn segments_path(&self) -> String {
        format!("{}/{}", self.dir, index::SEGMENTS_FILE)
    }
    pub fn gaps_path(&self) -> String {
        format!("{}/{}", self.dir, index::GAPS_FILE)
    }
}

/// The directory of the hour holding `segment_path` (its parent).
pub fn hour_dir_of(segment_path: &str) -> &str {
    segment_path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// The index row of a segment made of `frames` (non-empty), written as
/// `bytes` bytes at `path`.
pub fn segment_row(
    camera: &CameraId,
    frames: &[SegmentFrame],
    path: &str,
    bytes: usize,
    complete: bool,
) -> SegmentRow {
    let first = &frames[0].meta;
    let last = &frames[frames.len() - 1].meta;
    let frame_ticks = last.fps.frame_ticks_90k();
    let ticks = last.pts_90k.saturating_sub(first.pts_90k) + frame_ticks;
    SegmentRow {
        camera: camera.to_string(),
        first_seq: first.seq,
        last_seq: last.seq,
        start_capture_us: first.capture_us as i64,
        end_capture_us: (last.capture_us + frame_ticks * 1_000_000 / 90_000) as i64,
        media_duration_us: (ticks * 1_000_000 / 90_000) as i64,
        frames: frames.len() as u32,
        keyframes: frames.iter().filter(|f| f.meta.keyframe).count() as u32,
        bytes: bytes as u64,
        path: path.to_string(),
        epoch: first.epoch,
        width: first.width,
        height: first.height,
        complete,
    }
}

/// Reads an hour's tables; missing files are empty tables.
pub async fn load_hour<A: Archive>(archive: &A, dir: &str) -> Result<HourIndex, CatalogError> {
    let seg_path = format!("{dir}/{}", index::SEGMENTS_FILE);
    let gaps_path = format!("{dir}/{}", index::GAPS_FILE);
    let mut idx = HourIndex::default();
    if let Some(b) = archive.get(&seg_path).await? {
        idx.segments = index::decode_segments(&archive.location(&seg_path), b)?;
    }
    if let Some(b) = archive.get(&gaps_path).await? {
        idx.gaps = index::decode_gaps(&archive.location(&gaps_path), b)?;
    }
    Ok(idx)
}

/// Which tables of an hour to rewrite.
#[derive(Clone, Copy, Debug, Default)]
pub struct Changed {
    pub segments: bool,
    pub gaps: bool,
}

/// Writes the changed tables of an hour, gaps first. An hour left with no
/// rows at all loses its files (retention emptied it).
pub async fn save_hour<A: Archive>(
    archive: &A,
    dir: &str,
    idx: &HourIndex,
    changed: Changed,
) -> Result<(), CatalogError> {
    let seg_path = format!("{dir}/{}", index::SEGMENTS_FILE);
    let gaps_path = format!("{dir}/{}", index::GAPS_FILE);
    if changed.gaps {
        if idx.gaps.is_empty() {
            archive.delete(&gaps_path).await?;
        } else {
            let b = index::encode_gaps(&idx.gaps);
            archive.put(&gaps_path, Bytes::from(b)).await?;
        }
    }
    if changed.segments {
        if idx.segments.is_empty() {
            archive.delete(&seg_path).await?;
        } else {
            let b = index::encode_segments(&idx.segments);
            archive.put(&seg_path, Bytes::from(b)).await?;
        }
    }
    Ok(())
}

/// Records a segment (and the gaps before it) in its hour's index.
///
/// An index file that cannot be read (damaged outside camfleet: every write
/// here is atomic) is kept beside it as `<name>.damaged` and the table
/// starts again from the new rows, with an error logged: the collector must
/// not stop archiving video because an index file was damaged.
pub async fn record_segment<A: Archive>(
    archive: &A,
    row: SegmentRow,
    gaps: &[GapRow],
) -> Result<(), CatalogError> {
    let dir = hour_dir_of(&row.path).to_string();
    let mut idx = match load_hour(archive, &dir).await {
        Ok(idx) => idx,
        Err(CatalogError::Index(e)) => {
            tracing::error!(hour = %dir, error = %e, "damaged index moved aside; the hour's index starts again");
            metrics::counter!("camfleet_collector_index_damaged_files_total").increment(1);
            for name in [index::SEGMENTS_FILE, index::GAPS_FILE] {
                let p = format!("{dir}/{name}");
                if let Some(b) = archive.get(&p).await? {
                    archive.put(&format!("{p}.damaged"), b).await?;
                    archive.delete(&p).await?;
                }
            }
            HourIndex::default()
        }
        Err(e) => return Err(e),
    };
    let mut changed = Changed::default();
    for g in gaps {
        changed.gaps |= idx.upsert_gap(g.clone());
    }
    changed.segments = idx.upsert_segment(row);
    save_hour(archive, &dir, &idx, changed).await
}

/// Segments and gaps of `camera` overlapping `[from, to)` (either bound
/// optional), read from the index of the hours the range touches, oldest
/// first. Used by `archive ls/export` and by HTTP playback: the index, not
/// a listing of segment files, is what the archive holds.
pub async fn select_range<A: Archive>(
    archive: &A,
    camera: &CameraId,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<(Vec<SegmentRow>, Vec<GapRow>), CatalogError> {
    // A segment is filed under the hour of its first frame but may run past
    // it: look one hour further back.
    let hours = camera_hours(archive, camera, from_us.map(|f| f - HOUR_US), to_us).await?;
    let (mut segs, mut gaps) = (Vec::new(), Vec::new());
    for h in hours {
        let idx = load_hour(archive, &h.dir).await?;
        segs.extend(idx.segments.into_values().filter(|r| {
            from_us.is_none_or(|f| r.end_capture_us > f)
                && to_us.is_none_or(|t| r.start_capture_us < t)
        }));
        gaps.extend(idx.gaps.into_values().filter(|g| {
            from_us.is_none_or(|f| g.next_capture_us >= f)
                && to_us.is_none_or(|t| g.next_capture_us < t)
        }));
    }
    segs.sort_by_key(|r| (r.start_capture_us, r.first_seq));
    gaps.sort_by_key(|g| g.first_missing_seq);
    Ok((segs, gaps))
}

/// Every camera in the archive (`site/camera` directories), sorted. The
/// model registry's directory (`_models`, docs/learning.md) is not a site.
pub async fn cameras<A: Archive>(archive: &A) -> Result<Vec<CameraId>, CatalogError> {
    let mut out = Vec::new();
    for site in archive
        .list("")
        .await?
        .into_iter()
        .filter(|e| e.is_dir && e.name != crate::learn::registry::MODELS_DIR)
    {
        for cam in archive
            .list(&site.name)
            .await?
            .into_iter()
            .filter(|e| e.is_dir)
        {
            if let Ok(id) = CameraId::new(&format!("{}/{}", site.name, cam.name)) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// The hour directories of `camera` whose hour overlaps `[from_us, to_us)`
/// (either bound optional), oldest first. Directories whose names are not a
/// date are not the archive's and are skipped.
pub async fn camera_hours<A: Archive>(
    archive: &A,
    camera: &CameraId,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Vec<HourDir>, CatalogError> {
    let base = format!("{}/{}", camera.site(), camera.camera());
    let overlaps =
        |start: i64, end: i64| from_us.is_none_or(|f| end > f) && to_us.is_none_or(|t| start < t);
    let mut out = Vec::new();
    for y in dated(archive, &base, 4).await? {
        let (Some(ys), Some(ye)) = (ymdh_us(y, 1, 1, 0), ymdh_us(y + 1, 1, 1, 0)) else {
            continue;
        };
        if !overlaps(ys, ye) {
            continue;
        }
        let ydir = format!("{base}/{y:04}");
        for m in dated(archive, &ydir, 2).await? {
            let ms = ymdh_us(y, m, 1, 0);
            let me = if m == 12 {
                ymdh_us(y + 1, 1, 1, 0)
            } else {
                ymdh_us(y, m + 1, 1, 0)
            };
            let (Some(ms), Some(me)) = (ms, me) else {
                continue;
            };
            if !overlaps(ms, me) {
                continue;
            }
            let mdir = format!("{ydir}/{m:02}");
            for d in dated(archive, &mdir, 2).await? {
                let Some(ds) = ymdh_us(y, m, d, 0) else {
                    continue;
                };
                if !overlaps(ds, ds + 24 * HOUR_US) {
                    continue;
                }
                let ddir = format!("{mdir}/{d:02}");
                for h in dated(archive, &ddir, 2).await? {
                    let Some(hs) = ymdh_us(y, m, d, h) else {
                        continue;
                    };
                    if overlaps(hs, hs + HOUR_US) {
                        out.push(HourDir {
                            dir: format!("{ddir}/{h:02}"),
                            start_us: hs,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Subdirectories of `dir` named by a `digits`-digit number, ascending.
async fn dated<A: Archive>(
    archive: &A,
    dir: &str,
    digits: usize,
) -> Result<Vec<u32>, CatalogError> {
    let mut out: Vec<u32> = archive
        .list(dir)
        .await?
        .into_iter()
        .filter(|e| {
            e.is_dir && e.name.len() == digits && e.name.bytes().all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| e.name.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn ymdh_us(y: u32, m: u32, d: u32, h: u32) -> Option<i64> {
    let t = NaiveDate::from_ymd_opt(y as i32, m, d)?.and_hms_opt(h, 0, 0)?;
    Some(t.and_utc().timestamp_micros())
}

/// `yyyy-mm-ddThh` of an hour start, for people.
pub fn hour_label(start_us: i64) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp_micros(start_us).unwrap_or_default();
    format!(
        "{:04}-{:02}-{:02}T{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::GapReason;
    use crate::archive::local::LocalArchive;

    fn row(cam: &str, hour: &str, first: u64, frames: u32) -> SegmentRow {
        SegmentRow {
            camera: cam.into(),
            first_seq: first,
            last_seq: first + frames as u64 - 1,
            start_capture_us: 0,
            end_capture_us: 1,
            media_duration_us: 1,
            frames,
            keyframes: 1,
            bytes: 10,
            path: format!("{cam}/{hour}/{first:020}.ts"),
            epoch: 1,
            width: 2,
            height: 2,
            complete: true,
        }
    }

    #[tokio::test]
    async fn the_model_registry_is_not_a_site() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        a.put("s/c/2025/01/01/00/1.ts", Bytes::from_static(b"ts"))
            .await
            .unwrap();
        // `_models/<name>` would otherwise read as site `_models`, camera `<name>`.
        a.put("_models/scene@s@c/current", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let ids: Vec<String> = cameras(&a)
            .await
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(ids, ["s/c"]);
    }

    #[tokio::test]
    async fn recording_is_idempotent_and_gaps_come_along() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        let gap = GapRow {
            camera: "s/c".into(),
            first_missing_seq: 10,
            last_missing_seq: 19,
            reason: GapReason::Unknown,
            next_capture_us: 5,
        };
        record_segment(&a, row("s/c", "2025/01/02/03", 0, 10), &[])
            .await
            .unwrap();
        record_segment(
            &a,
            row("s/c", "2025/01/02/03", 20, 10),
            std::slice::from_ref(&gap),
        )
        .await
        .unwrap();
        // The replay of both.
        record_segment(&a, row("s/c", "2025/01/02/03", 0, 10), &[])
            .await
            .unwrap();
        record_segment(
            &a,
            row("s/c", "2025/01/02/03", 20, 10),
            std::slice::from_ref(&gap),
        )
        .await
        .unwrap();
        let idx = load_hour(&a, "s/c/2025/01/02/03").await.unwrap();
        assert_eq!(idx.segments.keys().copied().collect::<Vec<_>>(), [0, 20]);
        assert_eq!(idx.gaps.values().cloned().collect::<Vec<_>>(), [gap]);
    }

    #[tokio::test]
    async fn a_damaged_index_is_kept_aside_and_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        a.put(
            "s/c/2025/01/02/03/segments.parquet",
            Bytes::from_static(b"junk"),
        )
        .await
        .unwrap();
        record_segment(&a, row("s/c", "2025/01/02/03", 0, 10), &[])
            .await
            .unwrap();
        let idx = load_hour(&a, "s/c/2025/01/02/03").await.unwrap();
        assert_eq!(idx.segments.len(), 1);
        assert_eq!(
            a.get("s/c/2025/01/02/03/segments.parquet.damaged")
                .await
                .unwrap()
                .unwrap(),
            &b"junk"[..]
        );
    }

    #[tokio::test]
    async fn hours_are_walked_in_order_and_cut_by_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        for h in [
            "2024/12/31/23",
            "2025/01/01/00",
            "2025/01/01/01",
            "2025/02/01/00",
        ] {
            record_segment(&a, row("s/c", h, 0, 1), &[]).await.unwrap();
        }
        std::fs::create_dir_all(dir.path().join("s/c/notes")).unwrap();
        let cam = CameraId::new("s/c").unwrap();
        let all = camera_hours(&a, &cam, None, None).await.unwrap();
        let labels: Vec<String> = all.iter().map(|h| hour_label(h.start_us)).collect();
        assert_eq!(
            labels,
            [
                "2024-12-31T23",
                "2025-01-01T00",
                "2025-01-01T01",
                "2025-02-01T00"
            ]
        );
        assert_eq!(all[1].dir, "s/c/2025/01/01/00");
        // [00:30, 01:00) touches only hour 00.
        let from = all[1].start_us + HOUR_US / 2;
        let some = camera_hours(&a, &cam, Some(from), Some(all[2].start_us))
            .await
            .unwrap();
        assert_eq!(some, [all[1].clone()]);
        assert_eq!(cameras(&a).await.unwrap(), [cam]);
    }
}
