//! Reading the learning tables back: the trainer's view
//! (docs/learning.md). Works on any [`Archive`] (local directory, HDFS).

use super::features::{LabelSource, LabelledDetection};
use super::tables::{self, DetectionRow, FrameRow, HourTables, LabelRow, TableError};
use crate::archive::catalog::{self, CatalogError, HourDir};
use crate::archive::{Archive, ArchiveError};
use camfleet_shared::CameraId;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// An hour's three tables as stored (missing files are empty tables).
pub async fn load_hour_tables<A: Archive>(
    archive: &A,
    dir: &str,
) -> Result<HourTables, DatasetError> {
    let mut t = HourTables::default();
    let path = format!("{dir}/{}", tables::DETECTIONS_FILE);
    if let Some(b) = archive.get(&path).await? {
        for r in tables::decode_detections(&path, b)? {
            t.detections.insert(r.detection_id.clone(), r);
        }
    }
    let path = format!("{dir}/{}", tables::LABELS_FILE);
    if let Some(b) = archive.get(&path).await? {
        for r in tables::decode_labels(&path, b)? {
            t.upsert_label(r);
        }
    }
    let path = format!("{dir}/{}", tables::FRAMES_FILE);
    if let Some(b) = archive.get(&path).await? {
        for r in tables::decode_frames(&path, b)? {
            t.upsert_frame(r);
        }
    }
    Ok(t)
}

/// The hours of the cameras `camera` selects (all when `None`) overlapping
/// `[from_us, to_us)`.
async fn hours<A: Archive>(
    archive: &A,
    camera: Option<&CameraId>,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Vec<HourDir>, DatasetError> {
    let cameras = match camera {
        Some(c) => vec![c.clone()],
        None => catalog::cameras(archive).await?,
    };
    let mut out = Vec::new();
    for c in &cameras {
        out.extend(catalog::camera_hours(archive, c, from_us, to_us).await?);
    }
    Ok(out)
}

/// One label per labelled detection of an hour: ops' over stillness.
fn winning_labels(t: &HourTables) -> HashMap<&str, &LabelRow> {
    let mut verdicts: HashMap<&str, &LabelRow> = HashMap::new();
    for l in t.labels.values() {
        let keep = verdicts
            .get(l.detection_id.as_str())
            .is_none_or(|have| have.source != LabelSource::Ops);
        if keep {
            verdicts.insert(&l.detection_id, l);
        }
    }
    verdicts
}

fn in_range(t: i64, from_us: Option<i64>, to_us: Option<i64>) -> bool {
    from_us.is_none_or(|f| t >= f) && to_us.is_none_or(|e| t < e)
}

/// Every labelled detection of the selected cameras and time range: one per
/// detection that has a label, ops' label winning over stillness.
pub async fn load_labelled<A: Archive>(
    archive: &A,
    camera: Option<&CameraId>,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Vec<LabelledDetection>, DatasetError> {
    let mut out = Vec::new();
    for hour in hours(archive, camera, from_us, to_us).await? {
        let t = load_hour_tables(archive, &hour.dir).await?;
        let verdicts = winning_labels(&t);
        for d in t.detections.values() {
            if !in_range(d.capture_us, from_us, to_us) {
                continue;
            }
            if let Some(l) = verdicts.get(d.detection_id.as_str()) {
                out.push(LabelledDetection {
                    features: features_of(d),
                    real: l.real,
                    source: l.source,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (a.features.capture_us, &a.features.detection_id)
            .cmp(&(b.features.capture_us, &b.features.detection_id))
    });
    Ok(out)
}

/// The live labels of the detections a shadow verifier (`name` `version`)
/// scored: each row (both verdicts as recorded live) with its label, ops'
/// winning over stillness. The live gate's input.
pub async fn load_shadow_labelled<A: Archive>(
    archive: &A,
    camera: Option<&CameraId>,
    from_us: Option<i64>,
    name: &str,
    version: &str,
) -> Result<Vec<(DetectionRow, bool)>, DatasetError> {
    let mut out = Vec::new();
    for hour in hours(archive, camera, from_us, None).await? {
        let t = load_hour_tables(archive, &hour.dir).await?;
        let verdicts = winning_labels(&t);
        for d in t.detections.values() {
            let scored = d
                .shadow
                .as_ref()
                .is_some_and(|s| s.name == name && s.version == version);
            if !scored || !in_range(d.capture_us, from_us, None) {
                continue;
            }
            if let Some(l) = verdicts.get(d.detection_id.as_str()) {
                out.push((d.clone(), l.real));
            }
        }
    }
    out.sort_by(|a, b| {
        (a.0.capture_us, &a.0.detection_id).cmp(&(b.0.capture_us, &b.0.detection_id))
    });
    Ok(out)
}

/// Every detection row (labelled or not) of the selection: the stillness
/// rule's and shadow evaluation's input.
pub async fn load_detections<A: Archive>(
    archive: &A,
    camera: Option<&CameraId>,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Vec<DetectionRow>, DatasetError> {
    let mut out = Vec::new();
    for hour in hours(archive, camera, from_us, to_us).await? {
        let t = load_hour_tables(archive, &hour.dir).await?;
        out.extend(
            t.detections
                .into_values()
                .filter(|d| in_range(d.capture_us, from_us, to_us)),
        );
    }
    out.sort_by(|a, b| (a.capture_us, &a.detection_id).cmp(&(b.capture_us, &b.detection_id)));
    Ok(out)
}

/// Whole-frame embeddings (the scene model's training data), oldest first.
pub async fn load_scene_embeddings<A: Archive>(
    archive: &A,
    camera: Option<&CameraId>,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> Result<Vec<FrameRow>, DatasetError> {
    let mut out = Vec::new();
    for hour in hours(archive, camera, from_us, to_us).await? {
        let t = load_hour_tables(archive, &hour.dir).await?;
        out.extend(
            t.frames
                .into_values()
                .filter(|f| in_range(f.capture_us, from_us, to_us)),
        );
    }
    out.sort_by_key(|f| (f.capture_us, f.epoch, f.seq));
    Ok(out)
}

pub fn features_of(d: &DetectionRow) -> super::features::DetectionFeatures {
    super::features::DetectionFeatures {
        detection_id: d.detection_id.clone(),
        camera: d.camera.clone(),
        capture_us: d.capture_us,
        class_id: d.class_id,
        score: d.score,
        x_min: d.bbox[0],
        y_min: d.bbox[1],
        x_max: d.bbox[2],
        y_max: d.bbox[3],
        embedding: d.embedding.clone(),
    }
}

/// Where a detection id points: `(camera, epoch, seq, index)`; a clear
/// error naming the part that is wrong otherwise.
pub fn parse_detection_id(id: &str) -> Result<(CameraId, u64, u64, usize), String> {
    let mut parts = id.rsplitn(4, ':');
    let (Some(index), Some(seq), Some(epoch), Some(camera)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "detection id {id:?} is not <site>/<camera>:<epoch>:<seq>:<index>"
        ));
    };
    let camera = CameraId::new(camera).map_err(|e| format!("detection id {id:?}: camera: {e}"))?;
    let num = |what: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("detection id {id:?}: {what} {v:?} is not a number"))
    };
    Ok((
        camera,
        num("epoch", epoch)?,
        num("seq", seq)?,
        num("index", index)? as usize,
    ))
}

/// Finds a detection by id in its camera's tables, newest hour first.
pub async fn find_detection<A: Archive>(
    archive: &A,
    id: &str,
) -> Result<Option<DetectionRow>, DatasetError> {
    let Ok((camera, ..)) = parse_detection_id(id) else {
        return Ok(None);
    };
    let mut hours = catalog::camera_hours(archive, &camera, None, None).await?;
    hours.reverse();
    for hour in hours {
        let path = format!("{}/{}", hour.dir, tables::DETECTIONS_FILE);
        if let Some(b) = archive.get(&path).await? {
            if let Some(r) = tables::decode_detections(&path, b)?
                .into_iter()
                .find(|r| r.detection_id == id)
            {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_ids_parse_or_say_what_is_wrong() {
        let (c, e, s, i) = parse_detection_id("depot/gate:3:4711:2").unwrap();
        assert_eq!((c.as_str(), e, s, i), ("depot/gate", 3, 4711, 2));
        assert!(parse_detection_id("depot/gate:3:4711")
            .unwrap_err()
            .contains("<site>/<camera>"));
        assert!(parse_detection_id("depot/gate:x:1:2")
            .unwrap_err()
            .contains("epoch \"x\""));
        assert!(parse_detection_id("nocamera:1:1:2")
            .unwrap_err()
            .contains("camera"));
    }
}
