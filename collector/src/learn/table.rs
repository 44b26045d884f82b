//! The training tables as Parquet (schema in docs/learning.md, "Training
//! tables"): labelled detections and whole-frame embeddings. `train` and the
//! Spark path read them; the data side writes the same schema per
//! camera-hour next to the archive index.
//!
//! The labelled table also carries `verifier_input`, the row built by
//! [`verifier_input`] with the `camfleet.num_classes` recorded in the file's
//! metadata, so Spark (or any other trainer) fits on exactly what the live
//! scorer computes instead of re-implementing the layout.

use super::features::{
    verifier_input, DetectionFeatures, LabelSource, LabelledDetection, FEATURE_LAYOUT_VERSION,
};
use crate::archive::index::parquet_bytes;
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::Path;
use std::sync::Arc;

pub const LAYOUT_KEY: &str = "camfleet.feature_layout_version";
pub const NUM_CLASSES_KEY: &str = "camfleet.num_classes";

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn float_list(rows: impl Iterator<Item = Vec<f32>>) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// The labelled-detections table.
pub fn write_labelled(data: &[LabelledDetection], num_classes: usize) -> Vec<u8> {
    let f = |d: &LabelledDetection| d.features.clone();
    let schema = Schema::new(vec![
        Field::new("detection_id", DataType::Utf8, false),
        Field::new("camera", DataType::Utf8, false),
        Field::new("capture_us", DataType::Int64, false),
        Field::new("class_id", DataType::Int32, false),
        Field::new("score", DataType::Float32, false),
        Field::new("x_min", DataType::Float32, false),
        Field::new("y_min", DataType::Float32, false),
        Field::new("x_max", DataType::Float32, false),
        Field::new("y_max", DataType::Float32, false),
        Field::new("embedding", list_type(), false),
        Field::new("real", DataType::Boolean, false),
        Field::new("label_source", DataType::Utf8, false),
        Field::new("verifier_input", list_type(), false),
    ]);
    let floats = |g: fn(&DetectionFeatures) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(
            data.iter().map(|d| g(&d.features)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            data.iter().map(|d| d.features.detection_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            data.iter().map(|d| d.features.camera.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            data.iter().map(|d| d.features.capture_us),
        )),
        Arc::new(Int32Array::from_iter_values(
            data.iter().map(|d| d.features.class_id as i32),
        )),
        floats(|f| f.score),
        floats(|f| f.x_min),
        floats(|f| f.y_min),
        floats(|f| f.x_max),
        floats(|f| f.y_max),
        float_list(data.iter().map(|d| f(d).embedding)),
        Arc::new(BooleanArray::from_iter(data.iter().map(|d| Some(d.real)))),
        Arc::new(StringArray::from_iter_values(data.iter().map(
            |d| match d.source {
                LabelSource::Ops => "ops",
                LabelSource::Stillness => "stillness",
            },
        ))),
        float_list(
            data.iter()
                .map(|d| verifier_input(&d.features, num_classes)),
        ),
    ];
    parquet_bytes(
        &schema,
        columns,
        &[
            (LAYOUT_KEY, FEATURE_LAYOUT_VERSION.to_string()),
            (NUM_CLASSES_KEY, num_classes.to_string()),
        ],
    )
}

/// The frame-embeddings table (scene models): `camera`, `capture_us`, `embedding`.
pub fn write_frames(camera: &str, frames: &[(i64, Vec<f32>)]) -> Vec<u8> {
    let schema = Schema::new(vec![
        Field::new("camera", DataType::Utf8, false),
        Field::new("capture_us", DataType::Int64, false),
        Field::new("embedding", list_type(), false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(frames.iter().map(|_| camera))),
        Arc::new(Int64Array::from_iter_values(frames.iter().map(|f| f.0))),
        float_list(frames.iter().map(|f| f.1.clone())),
    ];
    parquet_bytes(&schema, columns, &[])
}

fn batches(path: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, TableError> {
    let err = |m: String| TableError::Format {
        path: path.into(),
        message: m,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| err(e.to_string()))?;
    reader.map(|b| b.map_err(|e| err(e.to_string()))).collect()
}

fn column<'b, T: 'static>(
    path: &str,
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b T, TableError> {
    let err = |m: String| TableError::Format {
        path: path.into(),
        message: m,
    };
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| err(format!("column {name} is missing")))?;
    if c.null_count() > 0 {
        return Err(err(format!("column {name} has nulls")));
    }
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        err(format!(
            "column {name} is {}, not the documented type",
            c.data_type()
        ))
    })
}

fn list_row(list: &ListArray, i: usize) -> Vec<f32> {
    let v = list.value(i);
    let f = v
        .as_any()
        .downcast_ref::<Float32Array>()
        .expect("checked list<float> type");
    f.values().to_vec()
}

fn check_list(path: &str, list: &ListArray, name: &str) -> Result<(), TableError> {
    if list.value_type() != DataType::Float32 {
        return Err(TableError::Format {
            path: path.into(),
            message: format!(
                "column {name} is list<{}>, expected list<float>",
                list.value_type()
            ),
        });
    }
    Ok(())
}

/// Labelled detections from one table.
pub fn read_labelled(path: &str, bytes: Bytes) -> Result<Vec<LabelledDetection>, TableError> {
    let mut out = Vec::new();
    for b in batches(path, bytes)? {
        let ids: &StringArray = column(path, &b, "detection_id")?;
        let cams: &StringArray = column(path, &b, "camera")?;
        let t: &Int64Array = column(path, &b, "capture_us")?;
        let class: &Int32Array = column(path, &b, "class_id")?;
        let fl = |n| column::<Float32Array>(path, &b, n);
        let (score, x0, y0, x1, y1) = (
            fl("score")?,
            fl("x_min")?,
            fl("y_min")?,
            fl("x_max")?,
            fl("y_max")?,
        );
        let emb: &ListArray = column(path, &b, "embedding")?;
        check_list(path, emb, "embedding")?;
        let real: &BooleanArray = column(path, &b, "real")?;
        let source: &StringArray = column(path, &b, "label_source")?;
        for i in 0..b.num_rows() {
            let source = match source.value(i) {
                "ops" => LabelSource::Ops,
                "stillness" => LabelSource::Stillness,
                other => {
                    return Err(TableError::Format {
                        path: path.into(),
                        message: format!("row {i}: label_source {other:?} is not ops or stillness"),
                    })
                }
            };
            out.push(LabelledDetection {
                features: DetectionFeatures {
                    detection_id: ids.value(i).into(),
                    camera: cams.value(i).into(),
                    capture_us: t.value(i),
                    class_id: class.value(i).max(0) as u32,
                    score: score.value(i),
                    x_min: x0.value(i),
                    y_min: y0.value(i),
                    x_max: x1.value(i),
                    y_max: y1.value(i),
                    embedding: list_row(emb, i),
                },
                real: real.value(i),
                source,
            });
        }
    }
    Ok(out)
}

/// Whole-frame embeddings `(camera, capture_us, embedding)` from one table.
pub fn read_frames(path: &str, bytes: Bytes) -> Result<Vec<(String, i64, Vec<f32>)>, TableError> {
    let mut out = Vec::new();
    for b in batches(path, bytes)? {
        let cams: &StringArray = column(path, &b, "camera")?;
        let t: &Int64Array = column(path, &b, "capture_us")?;
        let emb: &ListArray = column(path, &b, "embedding")?;
        check_list(path, emb, "embedding")?;
        for i in 0..b.num_rows() {
            out.push((cams.value(i).to_string(), t.value(i), list_row(emb, i)));
        }
    }
    Ok(out)
}

/// The `.parquet` files at `path` (a file, or a directory walked
/// recursively), sorted.
pub fn parquet_files(path: &Path) -> Result<Vec<std::path::PathBuf>, TableError> {
    let io = |p: &Path, source| TableError::Io {
        path: p.display().to_string(),
        source,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let p = e.map_err(|e| io(&d, e))?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every labelled detection under `path`.
pub fn load_labelled_files(path: &Path) -> Result<Vec<LabelledDetection>, TableError> {
    let mut out = Vec::new();
    for p in parquet_files(path)? {
        let bytes = std::fs::read(&p).map_err(|source| TableError::Io {
            path: p.display().to_string(),
            source,
        })?;
        out.extend(read_labelled(&p.display().to_string(), Bytes::from(bytes))?);
    }
    Ok(out)
}

/// Every frame embedding under `path`.
pub fn load_frame_files(path: &Path) -> Result<Vec<(String, i64, Vec<f32>)>, TableError> {
    let mut out = Vec::new();
    for p in parquet_files(path)? {
        let bytes = std::fs::read(&p).map_err(|source| TableError::Io {
            path: p.display().to_string(),
            source,
        })?;
        out.extend(read_frames(&p.display().to_string(), Bytes::from(bytes))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_and_frame_tables_round_trip() {
        let d = LabelledDetection {
            features: DetectionFeatures {
                detection_id: "s/c:1:2:0".into(),
                camera: "s/c".into(),
                capture_us: 42,
                class_id: 3,
                score: 0.7,
                x_min: 0.1,
                y_min: 0.2,
                x_max: 0.3,
                y_max: 0.4,
                embedding: vec![1.0, 2.0],
            },
            real: false,
            source: LabelSource::Stillness,
        };
        let bytes = write_labelled(std::slice::from_ref(&d), 5);
        assert_eq!(read_labelled("t", Bytes::from(bytes)).unwrap(), vec![d]);
        let bytes = write_frames("s/c", &[(7, vec![0.5, 0.25])]);
        assert_eq!(
            read_frames("t", Bytes::from(bytes)).unwrap(),
            vec![("s/c".to_string(), 7, vec![0.5, 0.25])]
        );
        let e = read_labelled("bad.parquet", Bytes::from_static(b"PAR1 nope")).unwrap_err();
        assert!(e.to_string().starts_with("bad.parquet:"), "{e}");
    }
}
