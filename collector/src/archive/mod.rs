//! The archive: where closed segments become durable.
//!
//! Layout (DESIGN.md section 3):
//! `<root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/<first-seq>.ts`, the hour being
//! the UTC capture time of the segment's first frame and `first-seq` its
//! sequence number zero-padded to 20 digits (so names sort in order).
//!
//! Architecture Invariant: [`Archive::put`] returns only once the segment is
//! durable under its final name, and a put of the same name replaces the
//! file whole (never a mix of old and new bytes). The consumer commits Kafka
//! offsets only after `put` returned, and segment names are deterministic, so
//! a replay after a crash rewrites the same files instead of duplicating video.
//!
//! Write protocol, both backends:
//! 1. write the bytes to `<dir>/.<name>.tmp` (a name readers skip);
//! 2. make them durable (local: fsync the file; HDFS: hsync + close, which
//!    completes the last block on the NameNode);
//! 3. rename over `<name>` (atomic on both);
//! 4. local: fsync the directory so the rename survives power loss.
//!
//! A crash leaves at most a stale `.tmp` file, which the next put of that name
//! overwrites.

pub mod catalog;
pub mod cli;
pub mod export;
pub mod hdfs;
pub mod index;
pub mod local;
pub mod mpegts;
pub mod retention;

use bytes::Bytes;
use camfleet_shared::CameraId;
use chrono::{DateTime, Datelike, Timelike, Utc};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {message}")]
    Io { path: String, message: String },
    #[error("archive root {root:?}: {message}")]
    Root { root: String, message: String },
}

/// A place segments are written to, durably.
pub trait Archive: Send + Sync {
    /// Writes `bytes` at `path` (relative to the root, `/`-separated).
    fn put(
        &self,
        path: &str,
        bytes: Bytes,
    ) -> impl std::future::Future<Output = Result<(), ArchiveError>> + Send;

    /// Where `path` ends up, for logs and for people (`/srv/archive/...`, `hdfs://...`).
    fn location(&self, path: &str) -> String;

    /// The whole file at `path`; `None` if there is none.
    fn get(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, ArchiveError>> + Send;

    /// The entries of directory `dir` (`""` = the root), sorted by name,
    /// hidden (`.`-prefixed) ones left out; empty if `dir` does not exist.
    fn list(
        &self,
        dir: &str,
    ) -> impl std::future::Future<Output = Result<Vec<DirEntry>, ArchiveError>> + Send;

    /// Removes a file or an empty directory; `false` if it was not there.
    fn delete(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<bool, ArchiveError>> + Send;
}

/// One entry of [`Archive::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name within its directory.
    pub name: String,
    pub is_dir: bool,
    /// Bytes (files only).
    pub len: u64,
}

/// The archive named by `archive.root`: `hdfs://...` or a local directory.
pub enum AnyArchive {
    Local(local::LocalArchive),
    Hdfs(hdfs::HdfsArchive),
}

impl AnyArchive {
    pub async fn open(root: &str) -> Result<Self, ArchiveError> {
        if root.starts_with("hdfs://") {
            Ok(Self::Hdfs(hdfs::HdfsArchive::open(root).await?))
        } else {
            Ok(Self::Local(local::LocalArchive::open(root)?))
        }
    }
}

impl Archive for AnyArchive {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        match self {
            Self::Local(a) => a.put(path, bytes).await,
            Self::Hdfs(a) => a.put(path, bytes).await,
        }
    }

    fn location(&self, path: &str) -> String {
        match self {
            Self::Local(a) => a.location(path),
            Self::Hdfs(a) => a.location(path),
        }
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, ArchiveError> {
        match self {
            Self::Local(a) => a.get(path).await,
            Self::Hdfs(a) => a.get(path).await,
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<DirEntry>, ArchiveError> {
        match self {
            Self::Local(a) => a.list(dir).await,
            Self::Hdfs(a) => a.list(dir).await,
        }
    }

    async fn delete(&self, path: &str) -> Result<bool, ArchiveError> {
        match self {
            Self::Local(a) => a.delete(path).await,
            Self::Hdfs(a) => a.delete(path).await,
        }
    }
}

/// The archive path of a segment.
pub fn segment_path(camera: &CameraId, first_seq: u64, first_capture_us: u64) -> String {
    let t: DateTime<Utc> =
        DateTime::from_timestamp_micros(first_capture_us as i64).unwrap_or_default();
    format!(
        "{}/{}/{:04}/{:02}/{:02}/{:02}/{:020}.ts",
        camera.site(),
        camera.camera(),
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        first_seq
    )
}

/// `dir/name` -> (`dir`, `dir/.name.tmp`).
fn temp_name(path: &str) -> (&str, String) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, format!("{dir}/.{name}.tmp")),
        None => ("", format!(".{path}.tmp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_path_follows_the_design_layout() {
        let cam = CameraId::new("depot/gate").unwrap();
        // 2025-11-21T22:26:52Z
        assert_eq!(
            segment_path(&cam, 4711, 1_763_764_012_000_000),
            "depot/gate/2025/11/21/22/00000000000000004711.ts"
        );
    }

    #[test]
    fn temp_names_are_hidden_siblings() {
        assert_eq!(temp_name("a/b/c.ts"), ("a/b", "a/b/.c.ts.tmp".to_string()));
    }
}
