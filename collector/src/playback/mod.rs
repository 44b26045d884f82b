//! Archive playback as HLS VOD for a time range (docs/live.md, "Archive
//! playback").
//!
//! ```text
//! GET /archive/<site>/<camera>/index.m3u8?from=..&to=..
//!      -> SegmentCatalog::segments(camera, from, to) -> VOD playlist (vod.rs)
//! GET /archive/<site>/<camera>/seg/<yyyy>/<mm>/<dd>/<hh>/<first seq>.ts
//!      -> SegmentCatalog::read
//! ```
//!
//! The catalog is a trait so the source of truth can change: today
//! [`directory::DirectoryCatalog`] walks a local archive's hour directories
//! and reads each segment's timestamps from the MPEG-TS itself; the
//! archive's Parquet index (issue 9) will answer the same questions with
//! capture times, for HDFS too.

pub mod directory;
pub mod ts_scan;
pub mod vod;

use bytes::Bytes;
use camfleet_shared::CameraId;

#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    #[error("archive {path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
}

/// One archived segment as playback needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedSegment {
    /// Path below the camera: `<yyyy>/<mm>/<dd>/<hh>/<first seq>.ts`.
    pub name: String,
    pub first_seq: u64,
    pub frames: u64,
    /// Media time of the first frame (90 kHz).
    pub first_pts_90k: u64,
    pub duration_s: f64,
    /// Start of the hour directory it is filed under (µs since the epoch):
    /// the capture hour of its first frame.
    pub hour_start_us: u64,
    /// Size and modification time, for the validator.
    pub bytes: u64,
    pub modified_ns: u128,
}

/// Where playback finds segments.
pub trait SegmentCatalog: Send + Sync + 'static {
    /// Segments of `camera` that may hold video captured in
    /// `[from_us, to_us)`, in archive order.
    fn segments(
        &self,
        camera: &CameraId,
        from_us: u64,
        to_us: u64,
    ) -> Result<Vec<ArchivedSegment>, PlaybackError>;

    /// The bytes of one segment named as in [`ArchivedSegment::name`].
    fn read(&self, camera: &CameraId, name: &str) -> Result<Bytes, PlaybackError>;
}

/// The catalog for `archive.root`: a local directory is read directly; an
/// HDFS archive is not played back until the archive index exists.
pub fn catalog_for(root: &str) -> Option<std::sync::Arc<dyn SegmentCatalog>> {
    if root.contains("://") {
        None
    } else {
        Some(std::sync::Arc::new(directory::DirectoryCatalog::new(root)))
    }
}
