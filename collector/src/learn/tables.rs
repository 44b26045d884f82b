//! The learning tables: Parquet per camera and hour next to the archive
//! index (same layout rules: collector/src/archive/index.rs), sans-I/O
//! (rows <-> bytes). docs/learning.md has the schemas and invariants.
//!
//! ```text
//! <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/detections.parquet  one row per detected object
//! <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/labels.parquet      one row per (detection, label source)
//! <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/frames.parquet      one row per sampled whole frame
//! ```
//!
//! The hour is the UTC capture hour of the picture. Rows are keyed
//! (detections by id, labels by id + source, frames by epoch + seq), so a
//! replayed record replaces its row: a detection never appears twice.

use super::features::LabelSource;
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const DETECTIONS_FILE: &str = "detections.parquet";
pub const LABELS_FILE: &str = "labels.parquet";
pub const FRAMES_FILE: &str = "frames.parquet";
/// Every learning table of an hour (retention deletes them with its video).
pub const TABLE_FILES: [&str; 3] = [DETECTIONS_FILE, LABELS_FILE, FRAMES_FILE];
pub const TABLES_VERSION: &str = "1";
const VERSION_KEY: &str = "camfleet.learning.version";
const TABLE_KEY: &str = "camfleet.learning.table";

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("learning table {path}: {message}")]
    Format { path: String, message: String },
}

/// One detected object.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionRow {
    pub detection_id: String,
    pub camera: String,
    pub capture_us: i64,
    pub epoch: u64,
    pub seq: u64,
    pub class_id: u32,
    pub label: String,
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]`, normalised.
    pub bbox: [f32; 4],
    pub model_name: String,
    pub model_version: String,
    /// The verifier in force when it was detected, if any.
    pub verifier: Option<super::record::Verdict>,
    pub backbone: String,
    pub embedding: Vec<f32>,
    /// The candidate in shadow's verdict, if one was scoring live.
    pub shadow: Option<super::record::Verdict>,
}

/// One label of one detection.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelRow {
    pub detection_id: String,
    pub camera: String,
    pub real: bool,
    pub source: LabelSource,
    /// When the label was given (ops) or derived (stillness), µs since the epoch.
    pub labelled_at_us: i64,
}

/// One sampled whole frame (the scene model's training data).
#[derive(Clone, Debug, PartialEq)]
pub struct FrameRow {
    pub camera: String,
    pub capture_us: i64,
    pub epoch: u64,
    pub seq: u64,
    pub backbone: String,
    pub embedding: Vec<f32>,
}

pub fn source_str(s: LabelSource) -> &'static str {
    match s {
        LabelSource::Ops => "ops",
        LabelSource::Stillness => "stillness",
    }
}

pub fn parse_source(s: &str) -> Option<LabelSource> {
    match s {
        "ops" => Some(LabelSource::Ops),
        "stillness" => Some(LabelSource::Stillness),
        _ => None,
    }
}

/// `site/camera/yyyy/mm/dd/hh` of a capture time.
pub fn hour_dir(camera: &str, capture_us: i64) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp_micros(capture_us).unwrap_or_default();
    format!(
        "{camera}/{:04}/{:02}/{:02}/{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// An hour's three tables, keyed for idempotent replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HourTables {
    pub detections: BTreeMap<String, DetectionRow>,
    pub labels: BTreeMap<(String, &'static str), LabelRow>,
    pub frames: BTreeMap<(u64, u64), FrameRow>,
}

impl HourTables {
    pub fn upsert_detection(&mut self, row: DetectionRow) -> bool {
        let changed = self.detections.get(&row.detection_id) != Some(&row);
        self.detections.insert(row.detection_id.clone(), row);
        changed
    }
    /// Last label per (detection, source) wins.
    pub fn upsert_label(&mut self, row: LabelRow) -> bool {
        let key = (row.detection_id.clone(), source_str(row.source));
        let changed = self.labels.get(&key) != Some(&row);
        self.labels.insert(key, row);
        changed
    }
    pub fn upsert_frame(&mut self, row: FrameRow) -> bool {
        let key = (row.epoch, row.seq);
        let changed = self.frames.get(&key) != Some(&row);
        self.frames.insert(key, row);
        changed
    }
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn embedding_field() -> Field {
    Field::new(
        "embedding",
        DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
        false,
    )
}

pub fn detections_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("detection_id", DataType::Utf8, false),
        Field::new("camera", DataType::Utf8, false),
        ts_field("capture_time"),
        Field::new("epoch", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("class_id", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("x_min", DataType::Float32, false),
        Field::new("y_min", DataType::Float32, false),
        Field::new("x_max", DataType::Float32, false),
        Field::new("y_max", DataType::Float32, false),
        Field::new("model_name", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("verifier_name", DataType::Utf8, true),
        Field::new("verifier_version", DataType::Utf8, true),
        Field::new("verifier_probability", DataType::Float32, true),
        Field::new("verifier_rejected", DataType::Boolean, true),
        Field::new("backbone", DataType::Utf8, false),
        embedding_field(),
        // Appended (columns are only ever appended): the live shadow.
        Field::new("shadow_name", DataType::Utf8, true),
        Field::new("shadow_version", DataType::Utf8, true),
        Field::new("shadow_probability", DataType::Float32, true),
        Field::new("shadow_rejected", DataType::Boolean, true),
    ]))
}

pub fn labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("detection_id", DataType::Utf8, false),
        Field::new("camera", DataType::Utf8, false),
        Field::new("real", DataType::Boolean, false),
        Field::new("source", DataType::Utf8, false),
        ts_field("labelled_at"),
    ]))
}

pub fn frames_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("camera", DataType::Utf8, false),
        ts_field("capture_time"),
        Field::new("epoch", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("backbone", DataType::Utf8, false),
        embedding_field(),
    ]))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn utc_ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn strings<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn embeddings<'a>(v: impl Iterator<Item = &'a [f32]>) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Float32,
        true,
    )));
    for e in v {
        b.values().append_slice(e);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Parquet bytes of the detections table, rows in capture order.
pub fn encode_detections(rows: &BTreeMap<String, DetectionRow>) -> Vec<u8> {
    let mut r: Vec<&DetectionRow> = rows.values().collect();
    r.sort_by(|a, b| {
        (a.capture_us, a.epoch, a.seq, &a.detection_id).cmp(&(
            b.capture_us,
            b.epoch,
            b.seq,
            &b.detection_id,
        ))
    });
    let f32s = |f: &dyn Fn(&DetectionRow) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(r.iter().map(|x| f(x))))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|x| x.detection_id.as_str())),
        strings(r.iter().map(|x| x.camera.as_str())),
        utc_ts(r.iter().map(|x| x.capture_us).collect()),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.epoch)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.seq)),
        )),
        Arc::new(Int32Array::from_iter_values(
            r.iter()
                .map(|x| i32::try_from(x.class_id).unwrap_or(i32::MAX)),
        )),
        strings(r.iter().map(|x| x.label.as_str())),
        f32s(&|x| x.score),
        f32s(&|x| x.bbox[0]),
        f32s(&|x| x.bbox[1]),
        f32s(&|x| x.bbox[2]),
        f32s(&|x| x.bbox[3]),
        strings(r.iter().map(|x| x.model_name.as_str())),
        strings(r.iter().map(|x| x.model_version.as_str())),
        Arc::new(StringArray::from_iter(
            r.iter()
                .map(|x| x.verifier.as_ref().map(|v| v.name.as_str())),
        )),
        Arc::new(StringArray::from_iter(
            r.iter()
                .map(|x| x.verifier.as_ref().map(|v| v.version.as_str())),
        )),
        Arc::new(Float32Array::from_iter(
            r.iter().map(|x| x.verifier.as_ref().map(|v| v.probability)),
        )),
        Arc::new(BooleanArray::from_iter(
            r.iter().map(|x| x.verifier.as_ref().map(|v| v.rejected)),
        )),
        strings(r.iter().map(|x| x.backbone.as_str())),
        embeddings(r.iter().map(|x| x.embedding.as_slice())),
        Arc::new(StringArray::from_iter(
            r.iter().map(|x| x.shadow.as_ref().map(|v| v.name.as_str())),
        )),
        Arc::new(StringArray::from_iter(
            r.iter()
                .map(|x| x.shadow.as_ref().map(|v| v.version.as_str())),
        )),
        Arc::new(Float32Array::from_iter(
            r.iter().map(|x| x.shadow.as_ref().map(|v| v.probability)),
        )),
        Arc::new(BooleanArray::from_iter(
            r.iter().map(|x| x.shadow.as_ref().map(|v| v.rejected)),
        )),
    ];
    write_table(detections_schema(), columns, "detections")
}

pub fn encode_labels(rows: &BTreeMap<(String, &'static str), LabelRow>) -> Vec<u8> {
    let r: Vec<&LabelRow> = rows.values().collect();
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|x| x.detection_id.as_str())),
        strings(r.iter().map(|x| x.camera.as_str())),
        Arc::new(BooleanArray::from(
            r.iter().map(|x| x.real).collect::<Vec<_>>(),
        )),
        strings(r.iter().map(|x| source_str(x.source))),
        utc_ts(r.iter().map(|x| x.labelled_at_us).collect()),
    ];
    write_table(labels_schema(), columns, "labels")
}

pub fn encode_frames(rows: &BTreeMap<(u64, u64), FrameRow>) -> Vec<u8> {
    let mut r: Vec<&FrameRow> = rows.values().collect();
    r.sort_by_key(|x| (x.capture_us, x.epoch, x.seq));
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|x| x.camera.as_str())),
        utc_ts(r.iter().map(|x| x.capture_us).collect()),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.epoch)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.seq)),
        )),
        strings(r.iter().map(|x| x.backbone.as_str())),
        embeddings(r.iter().map(|x| x.embedding.as_slice())),
    ];
    write_table(frames_schema(), columns, "frames")
}

fn write_table(schema: SchemaRef, columns: Vec<ArrayRef>, table: &str) -> Vec<u8> {
    crate::archive::index::parquet_bytes(
        &schema,
        columns,
        &[
            (VERSION_KEY, TABLES_VERSION.to_string()),
            (TABLE_KEY, table.to_string()),
        ],
    )
}

/// Typed column access over the batches of one file.
struct Columns<'a> {
    path: &'a str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn err(&self, m: String) -> TableError {
        TableError::Format {
            path: self.path.to_string(),
            message: m,
        }
    }
    fn get<T: 'static>(&self, name: &str) -> Result<&'a T, TableError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| self.err(format!("column {name} is missing")))?
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| self.err(format!("column {name} has the wrong type")))
    }
    fn strings(&self, name: &str) -> Result<&'a StringArray, TableError> {
        self.get::<StringArray>(name)
    }
    fn ts(&self, name: &str) -> Result<&'a TimestampMicrosecondArray, TableError> {
        self.get::<TimestampMicrosecondArray>(name)
    }
    fn i64s(&self, name: &str) -> Result<&'a Int64Array, TableError> {
        self.get::<Int64Array>(name)
    }
    fn f32s(&self, name: &str) -> Result<&'a Float32Array, TableError> {
        self.get::<Float32Array>(name)
    }
    fn embedding(&self, i: usize) -> Result<Vec<f32>, TableError> {
        let list = self.get::<ListArray>("embedding")?;
        let v = list.value(i);
        let f = v
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| self.err("embedding is not a list of float32".into()))?;
        Ok(f.values().to_vec())
    }
}

fn batches(path: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, TableError> {
    let err = |m: String| TableError::Format {
        path: path.to_string(),
        message: m,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| err(e.to_string()))?
        .build()
        .map_err(|e| err(e.to_string()))?;
    reader.map(|b| b.map_err(|e| err(e.to_string()))).collect()
}

pub fn decode_detections(path: &str, bytes: Bytes) -> Result<Vec<DetectionRow>, TableError> {
    let mut out = Vec::new();
    for batch in batches(path, bytes)? {
        let c = Columns {
            path,
            batch: &batch,
        };
        let (id, camera, t) = (
            c.strings("detection_id")?,
            c.strings("camera")?,
            c.ts("capture_time")?,
        );
        let (epoch, seq) = (c.i64s("epoch")?, c.i64s("seq")?);
        let class_id = c.get::<Int32Array>("class_id")?;
        let label = c.strings("label")?;
        let score = c.f32s("score")?;
        let b = [
            c.f32s("x_min")?,
            c.f32s("y_min")?,
            c.f32s("x_max")?,
            c.f32s("y_max")?,
        ];
        let (mn, mv) = (c.strings("model_name")?, c.strings("model_version")?);
        let (vn, vv) = (c.strings("verifier_name")?, c.strings("verifier_version")?);
        let vp = c.f32s("verifier_probability")?;
        let vr = c.get::<BooleanArray>("verifier_rejected")?;
        let backbone = c.strings("backbone")?;
        // Files written before the shadow columns existed have none.
        let shadow = match c.batch.column_by_name("shadow_name") {
            Some(_) => Some((
                c.strings("shadow_name")?,
                c.strings("shadow_version")?,
                c.f32s("shadow_probability")?,
                c.get::<BooleanArray>("shadow_rejected")?,
            )),
            None => None,
        };
        for i in 0..batch.num_rows() {
            out.push(DetectionRow {
                detection_id: id.value(i).into(),
                camera: camera.value(i).into(),
                capture_us: t.value(i),
                epoch: epoch.value(i).max(0) as u64,
                seq: seq.value(i).max(0) as u64,
                class_id: class_id.value(i).max(0) as u32,
                label: label.value(i).into(),
                score: score.value(i),
                bbox: [b[0].value(i), b[1].value(i), b[2].value(i), b[3].value(i)],
                model_name: mn.value(i).into(),
                model_version: mv.value(i).into(),
                verifier: (!vn.is_null(i)).then(|| super::record::Verdict {
                    name: vn.value(i).into(),
                    version: vv.value(i).into(),
                    probability: vp.value(i),
                    rejected: vr.value(i),
                }),
                backbone: backbone.value(i).into(),
                embedding: c.embedding(i)?,
                shadow: shadow.and_then(|(n, v, p, r)| {
                    (!n.is_null(i)).then(|| super::record::Verdict {
                        name: n.value(i).into(),
                        version: v.value(i).into(),
                        probability: p.value(i),
                        rejected: r.value(i),
                    })
                }),
            });
        }
    }
    Ok(out)
}

pub fn decode_labels(path: &str, bytes: Bytes) -> Result<Vec<LabelRow>, TableError> {
    let mut out = Vec::new();
    for batch in batches(path, bytes)? {
        let c = Columns {
            path,
            batch: &batch,
        };
        let (id, camera) = (c.strings("detection_id")?, c.strings("camera")?);
        let real = c.get::<BooleanArray>("real")?;
        let source = c.strings("source")?;
        let at = c.ts("labelled_at")?;
        for i in 0..batch.num_rows() {
            out.push(LabelRow {
                detection_id: id.value(i).into(),
                camera: camera.value(i).into(),
                real: real.value(i),
                source: parse_source(source.value(i))
                    .ok_or_else(|| c.err(format!("unknown label source {:?}", source.value(i))))?,
                labelled_at_us: at.value(i),
            });
        }
    }
    Ok(out)
}

pub fn decode_frames(path: &str, bytes: Bytes) -> Result<Vec<FrameRow>, TableError> {
    let mut out = Vec::new();
    for batch in batches(path, bytes)? {
        let c = Columns {
            path,
            batch: &batch,
        };
        let (camera, t) = (c.strings("camera")?, c.ts("capture_time")?);
        let (epoch, seq) = (c.i64s("epoch")?, c.i64s("seq")?);
        let backbone = c.strings("backbone")?;
        for i in 0..batch.num_rows() {
            out.push(FrameRow {
                camera: camera.value(i).into(),
                capture_us: t.value(i),
                epoch: epoch.value(i).max(0) as u64,
                seq: seq.value(i).max(0) as u64,
                backbone: backbone.value(i).into(),
                embedding: c.embedding(i)?,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn detection(id: &str, t: i64, verdict: bool) -> DetectionRow {
        DetectionRow {
            detection_id: id.into(),
            camera: "s/c".into(),
            capture_us: t,
            epoch: 1,
            seq: 7,
            class_id: 0,
            label: "person".into(),
            score: 0.75,
            bbox: [0.1, 0.2, 0.3, 0.4],
            model_name: "nanodet-g".into(),
            model_version: "3.0.4".into(),
            verifier: verdict.then(|| super::super::record::Verdict {
                name: "v".into(),
                version: "2".into(),
                probability: 0.25,
                rejected: true,
            }),
            backbone: "ssdlite-backbone".into(),
            embedding: vec![1.0, 2.5, -3.0],
            shadow: verdict.then(|| super::super::record::Verdict {
                name: "v".into(),
                version: "3".into(),
                probability: 0.75,
                rejected: false,
            }),
        }
    }

    #[test]
    fn tables_round_trip_and_replays_replace_rows() {
        let mut h = HourTables::default();
        assert!(h.upsert_detection(detection("s/c:1:7:0", 5, true)));
        assert!(h.upsert_detection(detection("s/c:1:7:1", 5, false)));
        assert!(
            !h.upsert_detection(detection("s/c:1:7:0", 5, true)),
            "replay changes nothing"
        );
        assert_eq!(h.detections.len(), 2);
        let back = decode_detections("d", Bytes::from(encode_detections(&h.detections))).unwrap();
        assert_eq!(back, h.detections.values().cloned().collect::<Vec<_>>());

        let label = |real, source, at| LabelRow {
            detection_id: "s/c:1:7:0".into(),
            camera: "s/c".into(),
            real,
            source,
            labelled_at_us: at,
        };
        h.upsert_label(label(false, LabelSource::Ops, 1));
        h.upsert_label(label(true, LabelSource::Ops, 2));
        h.upsert_label(label(false, LabelSource::Stillness, 3));
        assert_eq!(
            h.labels.len(),
            2,
            "last ops label wins, stillness kept beside it"
        );
        let back = decode_labels("l", Bytes::from(encode_labels(&h.labels))).unwrap();
        assert!(back.contains(&label(true, LabelSource::Ops, 2)));
        assert!(back.contains(&label(false, LabelSource::Stillness, 3)));

        h.upsert_frame(FrameRow {
            camera: "s/c".into(),
            capture_us: 9,
            epoch: 1,
            seq: 8,
            backbone: "b".into(),
            embedding: vec![0.5; 4],
        });
        let back = decode_frames("f", Bytes::from(encode_frames(&h.frames))).unwrap();
        assert_eq!(back, h.frames.values().cloned().collect::<Vec<_>>());
        assert!(
            decode_frames("x.parquet", Bytes::from_static(b"not parquet"))
                .unwrap_err()
                .to_string()
                .contains("x.parquet")
        );
    }

    #[test]
    fn hour_dirs_follow_the_archive_layout() {
        // 2025-11-21T22:26:52Z
        assert_eq!(
            hour_dir("depot/gate", 1_763_764_012_000_000),
            "depot/gate/2025/11/21/22"
        );
    }
}
