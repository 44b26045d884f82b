//! The archive index: Parquet tables per camera and hour, next to the
//! segments they describe (docs/archive.md, "The index").
//!
//! ```text
//! <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/segments.parquet   one row per segment
//! <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/gaps.parquet       one row per missing run (only if any)
//! ```
//!
//! Each kind of row has its own file, so a new table (detections) is a new
//! file name and never changes what existing readers see: Spark reads one
//! table with `spark.read.parquet("<root>/*/*/*/*/*/*/segments.parquet")`.
//! Columns are plain Parquet types Spark, Trino and pyarrow map without
//! options: signed 64-bit integers for sequence numbers, `TIMESTAMP(MICROS,
//! UTC)` for capture times, UTF-8 strings. New columns are only ever
//! appended, and the file's key-value metadata carries
//! `camfleet.index.version`.
//!
//! This module is sans-I/O: rows <-> Parquet bytes. `index::store` reads and
//! writes the files through an [`super::Archive`].

use arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::sync::Arc;

/// File name of the segments table in an hour directory.
pub const SEGMENTS_FILE: &str = "segments.parquet";
/// File name of the gaps table in an hour directory.
pub const GAPS_FILE: &str = "gaps.parquet";
/// Written into every index file's key-value metadata.
pub const INDEX_VERSION: &str = "1";
const VERSION_KEY: &str = "camfleet.index.version";
const TABLE_KEY: &str = "camfleet.index.table";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {path}: {message}")]
    Format { path: String, message: String },
}

/// One segment (`.ts` file) of one camera.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRow {
    /// `site/camera`.
    pub camera: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Capture time of the first frame, µs since the Unix epoch (UTC).
    pub start_capture_us: i64,
    /// Capture time of the last frame plus one frame interval: the segment
    /// covers `[start, end)`.
    pub end_capture_us: i64,
    /// Media time the segment plays for (last PTS - first PTS + one frame).
    pub media_duration_us: i64,
    pub frames: u32,
    pub keyframes: u32,
    pub bytes: u64,
    /// Relative to the archive root, `/`-separated.
    pub path: String,
    /// Stream epoch (one encoder run) of every frame in the segment.
    pub epoch: u64,
    pub width: u32,
    pub height: u32,
    /// False for a snapshot of a segment still open in the collector (it
    /// grows in place and retention never deletes it).
    pub complete: bool,
}

/// Why frames are missing from a camera's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GapReason {
    /// The agent's spool evicted them (announced in `cf.evicted`).
    EvictedAtEdge,
    /// Nobody said: lost on the way, dead-lettered, or never produced.
    Unknown,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EvictedAtEdge => "evicted_at_edge",
            Self::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "evicted_at_edge" => Some(Self::EvictedAtEdge),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

/// A run of sequence numbers of one camera that never reached the archive.
/// It is filed in the hour of the frame after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapRow {
    pub camera: String,
    pub first_missing_seq: u64,
    pub last_missing_seq: u64,
    pub reason: GapReason,
    /// Capture time of the first frame after the gap, µs since the epoch.
    pub next_capture_us: i64,
}

impl GapRow {
    pub fn frames(&self) -> u64 {
        self.last_missing_seq - self.first_missing_seq + 1
    }
}

/// Everything the index holds for one camera and hour, keyed so that a
/// replayed segment or gap replaces its row instead of adding one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourIndex {
    /// By first sequence number (the segment's name).
    pub segments: BTreeMap<u64, SegmentRow>,
    /// By first missing sequence number.
    pub gaps: BTreeMap<u64, GapRow>,
}

impl HourIndex {
    /// Adds or replaces the row of segment `row.first_seq`.
    pub fn upsert_segment(&mut self, row: SegmentRow) -> bool {
        let changed = self.segments.get(&row.first_seq) != Some(&row);
        self.segments.insert(row.first_seq, row);
        changed
    }

    /// Adds a gap; a replayed gap (same first number) replaces its row.
    pub fn upsert_gap(&mut self, row: GapRow) -> bool {
        let changed = self.gaps.get(&row.first_missing_seq) != Some(&row);
        self.gaps.insert(row.first_missing_seq, row);
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

/// The segments table's schema (columns are only ever appended).
pub fn segments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("camera", DataType::Utf8, false),
        Field::new("first_seq", DataType::Int64, false),
        Field::new("last_seq", DataType::Int64, false),
        ts_field("start_capture_time"),
        ts_field("end_capture_time"),
        Field::new("media_duration_us", DataType::Int64, false),
        Field::new("frames", DataType::Int32, false),
        Field::new("keyframes", DataType::Int32, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("width", DataType::Int32, false),
        Field::new("height", DataType::Int32, false),
        Field::new("complete", DataType::Boolean, false),
    ]))
}

/// The gaps table's schema.
pub fn gaps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("camera", DataType::Utf8, false),
        Field::new("first_missing_seq", DataType::Int64, false),
        Field::new("last_missing_seq", DataType::Int64, false),
        Field::new("frames", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        ts_field("next_capture_time"),
    ]))
}

fn i64_of(v: u64) -> i64 {
    // Sequence numbers and sizes stay far below 2^63 (a camera at 1000 fps
    // needs 292 million years); saturate rather than wrap if one ever did.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn utc_ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Parquet bytes of the segments table, rows in sequence order.
pub fn encode_segments(rows: &BTreeMap<u64, SegmentRow>) -> Vec<u8> {
    let r: Vec<&SegmentRow> = rows.values().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| &x.camera))),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.first_seq)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.last_seq)),
        )),
        utc_ts(r.iter().map(|x| x.start_capture_us).collect()),
        utc_ts(r.iter().map(|x| x.end_capture_us).collect()),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| x.media_duration_us),
        )),
        Arc::new(Int32Array::from_iter_values(
            r.iter().map(|x| i32_of(x.frames)),
        )),
        Arc::new(Int32Array::from_iter_values(
            r.iter().map(|x| i32_of(x.keyframes)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.bytes)),
        )),
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| &x.path))),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.epoch)),
        )),
        Arc::new(Int32Array::from_iter_values(
            r.iter().map(|x| i32_of(x.width)),
        )),
        Arc::new(Int32Array::from_iter_values(
            r.iter().map(|x| i32_of(x.height)),
        )),
        Arc::new(BooleanArray::from(
            r.iter().map(|x| x.complete).collect::<Vec<_>>(),
        )),
    ];
    write_table(segments_schema(), columns, "segments")
}

/// Parquet bytes of the gaps table, rows in sequence order.
pub fn encode_gaps(rows: &BTreeMap<u64, GapRow>) -> Vec<u8> {
    let r: Vec<&GapRow> = rows.values().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| &x.camera))),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.first_missing_seq)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.last_missing_seq)),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| i64_of(x.frames())),
        )),
        Arc::new(StringArray::from_iter_values(
            r.iter().map(|x| x.reason.as_str()),
        )),
        utc_ts(r.iter().map(|x| x.next_capture_us).collect()),
    ];
    write_table(gaps_schema(), columns, "gaps")
}

fn write_table(schema: SchemaRef, columns: Vec<ArrayRef>, table: &str) -> Vec<u8> {
    parquet_bytes(
        &schema,
        columns,
        &[
            (VERSION_KEY, INDEX_VERSION.to_string()),
            (TABLE_KEY, table.to_string()),
        ],
    )
}

/// One Parquet file (one row group, snappy) in memory, with `meta` in the
/// footer's key-value metadata and in the Arrow schema's metadata: readers
/// going through Arrow (pyarrow, Spark's vectorised reader) show the
/// schema's, others the footer's. Shared by every table the collector writes.
pub(crate) fn parquet_bytes(
    schema: &Schema,
    columns: Vec<ArrayRef>,
    meta: &[(&str, String)],
) -> Vec<u8> {
    let schema = Arc::new(Schema::new_with_metadata(
        schema.fields().clone(),
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<std::collections::HashMap<String, String>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .expect("columns are built from the schema above");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("camfleet-collector {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(
            meta.iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.clone()))
                .collect(),
        ))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props))
        .expect("an in-memory writer with a valid schema");
    // Writing to a Vec cannot fail except on a schema mismatch, ruled out above.
    w.write(&batch).expect("in-memory Parquet write");
    w.into_inner().expect("in-memory Parquet close")
}

/// Reads every batch of a Parquet file whose columns include `needed`.
fn read_batches(
    path: &str,
    bytes: Bytes,
    needed: &SchemaRef,
) -> Result<Vec<RecordBatch>, IndexError> {
    let err = |m: String| IndexError::Format {
        path: path.to_string(),
        message: m,
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| err(e.to_string()))?;
    // Checked on the file's schema, so an empty table is checked too.
    let file_schema = builder.schema().clone();
    for f in needed.fields() {
        let have = file_schema
            .field_with_name(f.name())
            .map_err(|_| err(format!("column {} is missing", f.name())))?;
        if have.data_type() != f.data_type() {
            return Err(err(format!(
                "column {} is {}, expected {}",
                f.name(),
                have.data_type(),
                f.data_type()
            )));
        }
    }
    let reader = builder.build().map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        for f in needed.fields() {
            if batch
                .column_by_name(f.name())
                .is_none_or(|c| c.null_count() > 0)
            {
                return Err(err(format!("column {} has nulls", f.name())));
            }
        }
        out.push(batch);
    }
    Ok(out)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("checked by read_batches")
}

fn u64_of(path: &str, name: &str, v: i64) -> Result<u64, IndexError> {
    u64::try_from(v).map_err(|_| IndexError::Format {
        path: path.to_string(),
        message: format!("column {name} has a negative value {v}"),
    })
}

/// Rows of a segments file (`path` names it in errors).
pub fn decode_segments(path: &str, bytes: Bytes) -> Result<BTreeMap<u64, SegmentRow>, IndexError> {
    let mut rows = BTreeMap::new();
    for b in read_batches(path, bytes, &segments_schema())? {
        let camera = col::<StringArray>(&b, "camera");
        let first = col::<Int64Array>(&b, "first_seq");
        let last = col::<Int64Array>(&b, "last_seq");
        let start = col::<TimestampMicrosecondArray>(&b, "start_capture_time");
        let end = col::<TimestampMicrosecondArray>(&b, "end_capture_time");
        let dur = col::<Int64Array>(&b, "media_duration_us");
        let frames = col::<Int32Array>(&b, "frames");
        let keyframes = col::<Int32Array>(&b, "keyframes");
        let bytes_c = col::<Int64Array>(&b, "bytes");
        let p = col::<StringArray>(&b, "path");
        let epoch = col::<Int64Array>(&b, "epoch");
        let width = col::<Int32Array>(&b, "width");
        let height = col::<Int32Array>(&b, "height");
        let complete = col::<BooleanArray>(&b, "complete");
        for i in 0..b.num_rows() {
            let row = SegmentRow {
                camera: camera.value(i).to_string(),
                first_seq: u64_of(path, "first_seq", first.value(i))?,
                last_seq: u64_of(path, "last_seq", last.value(i))?,
                start_capture_us: start.value(i),
                end_capture_us: end.value(i),
                media_duration_us: dur.value(i),
                frames: u64_of(path, "frames", frames.value(i).into())? as u32,
                keyframes: u64_of(path, "keyframes", keyframes.value(i).into())? as u32,
                bytes: u64_of(path, "bytes", bytes_c.value(i))?,
                path: p.value(i).to_string(),
                epoch: u64_of(path, "epoch", epoch.value(i))?,
                width: u64_of(path, "width", width.value(i).into())? as u32,
                height: u64_of(path, "height", height.value(i).into())? as u32,
                complete: complete.value(i),
            };
            rows.insert(row.first_seq, row);
        }
    }
    Ok(rows)
}

/// Rows of a gaps file.
pub fn decode_gaps(path: &str, bytes: Bytes) -> Result<BTreeMap<u64, GapRow>, IndexError> {
    let mut rows = BTreeMap::new();
    for b in read_batches(path, bytes, &gaps_schema())? {
        let camera = col::<StringArray>(&b, "camera");
        let first = col::<Int64Array>(&b, "first_missing_seq");
        let last = col::<Int64Array>(&b, "last_missing_seq");
        let reason = col::<StringArray>(&b, "reason");
        let next = col::<TimestampMicrosecondArray>(&b, "next_capture_time");
        for i in 0..b.num_rows() {
            let row = GapRow {
                camera: camera.value(i).to_string(),
                first_missing_seq: u64_of(path, "first_missing_seq", first.value(i))?,
                last_missing_seq: u64_of(path, "last_missing_seq", last.value(i))?,
                reason: GapReason::parse(reason.value(i)).ok_or_else(|| IndexError::Format {
                    path: path.to_string(),
                    message: format!("unknown gap reason {:?}", reason.value(i)),
                })?,
                next_capture_us: next.value(i),
            };
            rows.insert(row.first_missing_seq, row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn seg(first: u64, frames: u32) -> SegmentRow {
        SegmentRow {
            camera: "depot/gate".into(),
            first_seq: first,
            last_seq: first + frames as u64 - 1,
            start_capture_us: 1_763_764_012_000_000 + first as i64 * 33_333,
            end_capture_us: 1_763_764_012_000_000 + (first + frames as u64) as i64 * 33_333,
            media_duration_us: frames as i64 * 33_333,
            frames,
            keyframes: 1,
            bytes: 1000 * frames as u64,
            path: format!("depot/gate/2025/11/21/22/{first:020}.ts"),
            epoch: 7,
            width: 1280,
            height: 720,
            complete: true,
        }
    }

    #[test]
    fn segments_round_trip_through_parquet() {
        let mut idx = HourIndex::default();
        idx.upsert_segment(seg(0, 60));
        idx.upsert_segment(seg(60, 30));
        let bytes = encode_segments(&idx.segments);
        assert_eq!(&bytes[..4], b"PAR1");
        let back = decode_segments("t", Bytes::from(bytes)).unwrap();
        assert_eq!(back, idx.segments);
    }

    #[test]
    fn a_replayed_segment_replaces_its_row() {
        let mut idx = HourIndex::default();
        let mut snapshot = seg(0, 20);
        snapshot.complete = false;
        assert!(idx.upsert_segment(snapshot));
        assert!(idx.upsert_segment(seg(0, 60)));
        assert!(!idx.upsert_segment(seg(0, 60)), "same row: no change");
        assert_eq!(idx.segments.len(), 1);
        assert!(idx.segments[&0].complete);
    }

    #[test]
    fn gaps_round_trip_and_count_frames() {
        let mut idx = HourIndex::default();
        let g = GapRow {
            camera: "depot/gate".into(),
            first_missing_seq: 100,
            last_missing_seq: 159,
            reason: GapReason::EvictedAtEdge,
            next_capture_us: 1,
        };
        assert_eq!(g.frames(), 60);
        idx.upsert_gap(g.clone());
        idx.upsert_gap(GapRow {
            first_missing_seq: 200,
            last_missing_seq: 200,
            reason: GapReason::Unknown,
            ..g
        });
        let back = decode_gaps("t", Bytes::from(encode_gaps(&idx.gaps))).unwrap();
        assert_eq!(back, idx.gaps);
    }

    #[test]
    fn a_foreign_or_truncated_file_is_an_error_naming_it() {
        let e = decode_segments("a/b/segments.parquet", Bytes::from_static(b"not parquet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/b/segments.parquet"), "{e}");
        let mut idx = HourIndex::default();
        idx.upsert_segment(seg(0, 60));
        let bytes = encode_segments(&idx.segments);
        let cut = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        assert!(decode_segments("x", cut).is_err());
        // A gaps file is not a segments file.
        let gaps = encode_gaps(&BTreeMap::new());
        let e = decode_segments("g", Bytes::from(gaps))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
