//! Retention: delete whole segments, oldest first, when a camera's or the
//! archive's limits by age or size are hit (docs/archive.md, "Retention").
//!
//! [`plan`] is sans-I/O: it decides from the index rows, the limits, the
//! clock and what Kafka has committed. [`apply`] carries a plan out, hour by
//! hour: first the index is rewritten without the rows (atomic put), then
//! the segment files are deleted, then the hour's directory if it is empty.
//! A crash between those steps leaves segment files the index no longer
//! lists; they are older than everything the index lists for that camera,
//! and the next run deletes them (step 3 of [`apply`]), so no reader ever
//! follows an index row to a missing file.
//!
//! Architecture Invariant: a segment is deletable only when it is complete
//! (not the snapshot of a segment still open in a collector) and its last
//! frame is at or below the camera's watermark in the committed Kafka
//! metadata, i.e. no replay would write it again. Per camera, deletion stops
//! at the first segment that is not deletable, so "oldest first" holds.

use super::catalog::{self, Changed, HourDir};
use super::index::SegmentRow;
use super::Archive;
use camfleet_shared::config::RetentionConfig;
use camfleet_shared::CameraId;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Why a segment was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Older than the camera's `max_age_s`.
    Age,
    /// Its camera holds more than its `max_bytes`.
    CameraSize,
    /// The archive holds more than `archive.retention.max_bytes`.
    TotalSize,
}

/// One segment to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub hour: HourDir,
    pub row: SegmentRow,
    pub reason: Reason,
}

/// A segment as retention sees it.
#[derive(Clone, Debug)]
pub struct Held {
    pub hour: HourDir,
    pub row: SegmentRow,
}

/// Chooses the segments to delete. `committed` is each camera's watermark
/// in the committed Kafka metadata (a camera missing from it has nothing
/// deletable).
pub fn plan(
    mut held: Vec<Held>,
    limits: &RetentionConfig,
    now_us: i64,
    committed: &BTreeMap<String, u64>,
) -> Vec<Deletion> {
    held.sort_by(|a, b| {
        (a.row.start_capture_us, &a.row.camera, a.row.first_seq).cmp(&(
            b.row.start_capture_us,
            &b.row.camera,
            b.row.first_seq,
        ))
    });
    let deletable =
        |r: &SegmentRow| r.complete && committed.get(&r.camera).is_some_and(|w| r.last_seq <= *w);
    let mut out: Vec<Deletion> = Vec::new();
    let mut gone: HashSet<(String, u64)> = HashSet::new();
    // Cameras whose oldest remaining segment is not deletable: nothing newer goes.
    let mut blocked: HashSet<String> = HashSet::new();

    // Per camera, oldest first: age, then the camera's own size limit.
    let mut by_camera: BTreeMap<&str, Vec<&Held>> = BTreeMap::new();
    for h in &held {
        by_camera.entry(&h.row.camera).or_default().push(h);
    }
    for (camera, segs) in &by_camera {
        let max_age_s = limits.max_age_s(camera);
        let cutoff = (max_age_s > 0).then(|| now_us - (max_age_s as i64) * 1_000_000);
        let cam_max = limits.for_camera(camera).and_then(|c| c.max_bytes);
        let mut total: u64 = segs.iter().map(|h| h.row.bytes).sum();
        for h in segs {
            let reason = if cutoff.is_some_and(|c| h.row.end_capture_us <= c) {
                Reason::Age
            } else if cam_max.is_some_and(|m| total > m) {
                Reason::CameraSize
            } else {
                break;
            };
            if !deletable(&h.row) {
                blocked.insert(camera.to_string());
                break;
            }
            total -= h.row.bytes;
            gone.insert((h.row.camera.clone(), h.row.first_seq));
            out.push(Deletion {
                hour: h.hour.clone(),
                row: h.row.clone(),
                reason,
            });
        }
    }

    // The whole archive, oldest first across cameras.
    if limits.max_bytes > 0 {
        let mut total: u64 = held
            .iter()
            .filter(|h| !gone.contains(&(h.row.camera.clone(), h.row.first_seq)))
            .map(|h| h.row.bytes)
            .sum();
        for h in &held {
            if total <= limits.max_bytes {
                break;
            }
            let key = (h.row.camera.clone(), h.row.first_seq);
            if gone.contains(&key) || blocked.contains(&h.row.camera) {
                continue;
            }
            if !deletable(&h.row) {
                blocked.insert(h.row.camera.clone());
                continue;
            }
            total -= h.row.bytes;
            gone.insert(key);
            out.push(Deletion {
                hour: h.hour.clone(),
                row: h.row.clone(),
                reason: Reason::TotalSize,
            });
        }
    }
    out.sort_by(|a, b| {
        (a.row.start_capture_us, &a.row.camera, a.row.first_seq).cmp(&(
            b.row.start_capture_us,
            &b.row.camera,
            b.row.first_seq,
        ))
    });
    out
}

/// Every segment row in the archive (or of the given cameras), with its hour.
pub async fn inventory<A: Archive>(
    archive: &A,
    cameras: &[CameraId],
) -> Result<Vec<Held>, catalog::CatalogError> {
    let mut out = Vec::new();
    for camera in cameras {
        for hour in catalog::camera_hours(archive, camera, None, None).await? {
            let idx = catalog::load_hour(archive, &hour.dir).await?;
            out.extend(idx.segments.into_values().map(|row| Held {
                hour: hour.clone(),
                row,
            }));
        }
    }
    Ok(out)
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub segments: u64,
    pub bytes: u64,
    /// Segment files no index listed any more, left by an interrupted run.
    pub leftovers: u64,
}

/// Carries out a plan: per hour, (1) rewrite the index without the rows,
/// (2) delete the segment files, (3) delete files of that camera's hour that
/// no index row lists and that are older than every row it keeps (left by a
/// crash between 1 and 2), (4) remove the hour directory once it is empty.
pub async fn apply<A: Archive>(
    archive: &A,
    deletions: &[Deletion],
) -> Result<Applied, catalog::CatalogError> {
    let mut by_hour: BTreeMap<&HourDir, Vec<&Deletion>> = BTreeMap::new();
    for d in deletions {
        by_hour.entry(&d.hour).or_default().push(d);
    }
    let mut done = Applied::default();
    for (hour, dels) in by_hour {
        let mut idx = catalog::load_hour(archive, &hour.dir).await?;
        let mut changed = Changed::default();
        for d in &dels {
            changed.segments |= idx.segments.remove(&d.row.first_seq).is_some();
        }
        if idx.segments.is_empty() && !idx.gaps.is_empty() {
            // The hour's video is gone; its gaps describe nothing left.
            idx.gaps.clear();
            changed.gaps = true;
        }
        catalog::save_hour(archive, &hour.dir, &idx, changed).await?;
        if idx.segments.is_empty() {
            // The hour's last video is gone: its learning tables
            // (docs/learning.md) describe nothing left either.
            for name in crate::learn::tables::TABLE_FILES {
                archive.delete(&format!("{}/{name}", hour.dir)).await?;
            }
        }
        for d in &dels {
            if archive.delete(&d.row.path).await? {
                done.segments += 1;
                done.bytes += d.row.bytes;
            }
        }
        let kept_from = idx.segments.keys().next().copied();
        let listed: BTreeSet<String> = idx
            .segments
            .values()
            .filter_map(|r| r.path.rsplit('/').next().map(str::to_string))
            .collect();
        let mut left = 0usize;
        for e in archive.list(&hour.dir).await? {
            let seq = e
                .name
                .strip_suffix(".ts")
                .and_then(|s| s.parse::<u64>().ok());
            let leftover = match seq {
                Some(seq) if !listed.contains(&e.name) => kept_from.is_none_or(|k| seq < k),
                _ => false,
            };
            if leftover && archive.delete(&format!("{}/{}", hour.dir, e.name)).await? {
                done.leftovers += 1;
            } else {
                left += 1;
            }
        }
        if left == 0 {
            remove_empty_dirs(archive, &hour.dir).await?;
        }
    }
    Ok(done)
}

/// Removes `dir` and then its parents up to the camera directory, each only
/// if empty.
async fn remove_empty_dirs<A: Archive>(
    archive: &A,
    dir: &str,
) -> Result<(), catalog::CatalogError> {
    let mut d = dir.to_string();
    // site/camera/yyyy/mm/dd/hh: four date levels above the camera.
    for _ in 0..4 {
        if !archive.list(&d).await?.is_empty() {
            break;
        }
        // A hidden leftover (a stale .tmp) keeps the directory; that is fine.
        if archive.delete(&d).await.is_err() {
            break;
        }
        match d.rsplit_once('/') {
            Some((parent, _)) => d = parent.to_string(),
            None => break,
        }
    }
    Ok(())
}

/// Totals of a plan, per camera and reason, for logs and `archive prune`.
pub fn summarize(deletions: &[Deletion]) -> BTreeMap<(String, Reason), (u64, u64)> {
    let mut out: BTreeMap<(String, Reason), (u64, u64)> = BTreeMap::new();
    for d in deletions {
        let e = out.entry((d.row.camera.clone(), d.reason)).or_default();
        e.0 += 1;
        e.1 += d.row.bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::config::CameraRetention;

    const S: i64 = 1_000_000;

    fn held(cam: &str, first: u64, start_s: i64, bytes: u64) -> Held {
        Held {
            hour: HourDir {
                dir: format!("{cam}/2025/01/01/00"),
                start_us: 0,
            },
            row: SegmentRow {
                camera: cam.into(),
                first_seq: first,
                last_seq: first + 9,
                start_capture_us: start_s * S,
                end_capture_us: (start_s + 4) * S,
                media_duration_us: 4 * S,
                frames: 10,
                keyframes: 1,
                bytes,
                path: format!("{cam}/2025/01/01/00/{first:020}.ts"),
                epoch: 1,
                width: 2,
                height: 2,
                complete: true,
            },
        }
    }

    fn firsts(d: &[Deletion]) -> Vec<(String, u64, Reason)> {
        d.iter()
            .map(|d| (d.row.camera.clone(), d.row.first_seq, d.reason))
            .collect()
    }

    fn all_committed() -> BTreeMap<String, u64> {
        [("s/a".to_string(), u64::MAX), ("s/b".to_string(), u64::MAX)].into()
    }

    #[test]
    fn age_deletes_segments_that_ended_before_the_cutoff() {
        let segs = (0..5)
            .map(|i| held("s/a", i * 10, i as i64 * 4, 100))
            .collect();
        let limits = RetentionConfig {
            max_age_s: 10,
            ..Default::default()
        };
        // now = 20 s: cutoff 10 s; segments end at 4, 8, 12, ...
        let d = plan(segs, &limits, 20 * S, &all_committed());
        assert_eq!(
            firsts(&d),
            [
                ("s/a".into(), 0, Reason::Age),
                ("s/a".into(), 10, Reason::Age)
            ]
        );
    }

    #[test]
    fn total_size_deletes_the_oldest_across_cameras_until_under() {
        let segs = vec![
            held("s/a", 0, 0, 100),
            held("s/b", 0, 1, 100),
            held("s/a", 10, 4, 100),
            held("s/b", 10, 5, 100),
        ];
        let limits = RetentionConfig {
            max_bytes: 250,
            ..Default::default()
        };
        let d = plan(segs, &limits, 100 * S, &all_committed());
        assert_eq!(
            firsts(&d),
            [
                ("s/a".into(), 0, Reason::TotalSize),
                ("s/b".into(), 0, Reason::TotalSize)
            ]
        );
    }

    #[test]
    fn camera_size_applies_to_matching_cameras_only() {
        let segs = (0..4)
            .flat_map(|i| {
                [
                    held("s/a", i * 10, i as i64 * 4, 100),
                    held("s/b", i * 10, i as i64 * 4, 100),
                ]
            })
            .collect();
        let limits = RetentionConfig {
            camera: vec![CameraRetention {
                id: "s/b".into(),
                max_age_s: None,
                max_bytes: Some(200),
            }],
            ..Default::default()
        };
        let d = plan(segs, &limits, 100 * S, &all_committed());
        assert_eq!(
            firsts(&d),
            [
                ("s/b".into(), 0, Reason::CameraSize),
                ("s/b".into(), 10, Reason::CameraSize)
            ]
        );
    }

    #[test]
    fn nothing_open_or_uncommitted_is_deleted_and_order_is_kept() {
        let mut segs: Vec<Held> = (0..4)
            .map(|i| held("s/a", i * 10, i as i64 * 4, 100))
            .collect();
        segs[1].row.complete = false;
        let limits = RetentionConfig {
            max_bytes: 1,
            ..Default::default()
        };
        let d = plan(segs.clone(), &limits, 100 * S, &all_committed());
        assert_eq!(
            firsts(&d),
            [("s/a".into(), 0, Reason::TotalSize)],
            "stops at the open one"
        );
        segs[1].row.complete = true;
        // Committed up to seq 15: segment 10..19 may be replayed, so it stays.
        let committed = [("s/a".to_string(), 15)].into();
        let d = plan(segs.clone(), &limits, 100 * S, &committed);
        assert_eq!(firsts(&d), [("s/a".into(), 0, Reason::TotalSize)]);
        assert!(
            plan(segs, &limits, 100 * S, &BTreeMap::new()).is_empty(),
            "unknown camera"
        );
    }

    #[tokio::test]
    async fn apply_rewrites_the_index_then_deletes_files_and_empty_hours() {
        use crate::archive::local::LocalArchive;
        use bytes::Bytes;
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        let segs: Vec<Held> = (1..4)
            .map(|i| held("s/a", i * 10, i as i64 * 4, 3))
            .collect();
        for h in &segs {
            a.put(&h.row.path, Bytes::from_static(b"abc"))
                .await
                .unwrap();
            catalog::record_segment(&a, h.row.clone(), &[])
                .await
                .unwrap();
        }
        // A file an interrupted run left behind: older than all rows, unlisted.
        a.put(
            "s/a/2025/01/01/00/00000000000000000000.ts",
            Bytes::from_static(b"abc"),
        )
        .await
        .unwrap();
        // The hour's learning tables (docs/learning.md) go with its last segment.
        for name in crate::learn::tables::TABLE_FILES {
            a.put(
                &format!("s/a/2025/01/01/00/{name}"),
                Bytes::from_static(b"t"),
            )
            .await
            .unwrap();
        }
        let cam = CameraId::new("s/a").unwrap();
        let inv = inventory(&a, std::slice::from_ref(&cam)).await.unwrap();
        let limits = RetentionConfig {
            max_bytes: 3,
            ..Default::default()
        };
        let d = plan(inv, &limits, 0, &all_committed());
        assert_eq!(d.len(), 2);
        let done = apply(&a, &d).await.unwrap();
        assert_eq!((done.segments, done.bytes, done.leftovers), (2, 6, 1));
        let idx = catalog::load_hour(&a, "s/a/2025/01/01/00").await.unwrap();
        assert_eq!(idx.segments.keys().copied().collect::<Vec<_>>(), [30]);
        let files: Vec<String> = a
            .list("s/a/2025/01/01/00")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            files,
            [
                "00000000000000000030.ts",
                "detections.parquet",
                "frames.parquet",
                "labels.parquet",
                "segments.parquet"
            ]
        );
        // Emptying the hour removes it and its empty parents.
        let inv = inventory(&a, &[cam]).await.unwrap();
        let d = plan(
            inv,
            &RetentionConfig {
                max_bytes: 1,
                ..Default::default()
            },
            0,
            &all_committed(),
        );
        apply(&a, &d).await.unwrap();
        assert!(a.list("s/a").await.unwrap().is_empty());
    }
}
