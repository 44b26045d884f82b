//! Open segments' frame bytes on local disk instead of in memory.
//!
//! Measured (issue 9): holding each camera's open segment in memory cost
//! ~1 MB per camera (4 s at 2 Mbit/s), 588 MB at 500 cameras. Instead, each
//! accepted frame's bytes are appended to its open segment's spill file and
//! the segmenter keeps only the metadata and (file, offset, length). The
//! bytes come back when the segment is muxed (closed or snapshotted), one
//! read per segment.
//!
//! A spill file is an unnamed temporary file (`O_TMPFILE` where the file
//! system has it, else created and unlinked at once) in `archive.spill_dir`:
//! no name is ever visible, nothing is fsynced (the bytes are a cache of
//! Kafka records that are not committed yet), and the kernel frees it when
//! the last frame holding it is dropped: when its segment is durable, its
//! partition was revoked, or the process died. Crash recovery therefore has
//! nothing to do: the frames are replayed from Kafka as before. The pages
//! live in the page cache, which the kernel writes back or reclaims under
//! pressure, unlike process memory.

use crate::segmenter::{FrameData, SegmentFrame};
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("spill file: {what}: {source}")]
    File {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Makes spill files in one directory.
pub struct Spiller {
    dir: PathBuf,
}

impl Spiller {
    /// Checks at start that `dir` takes temporary files (creating it if
    /// missing), so a bad `archive.spill_dir` fails the start, not a frame.
    pub fn open(dir: &Path) -> Result<Self, SpillError> {
        let err = |source| SpillError::Dir {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        tempfile::tempfile_in(dir).map_err(err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the bytes of the last frame of an open segment to disk: into
    /// the file of the frame before it, or a new file when it starts the
    /// segment (a segment's frames are contiguous in one file). Frames
    /// before it that are still in memory (an earlier spill failed) stay there.
    pub fn spill_last(&self, frames: &mut [SegmentFrame]) -> Result<(), SpillError> {
        let Some((last, before)) = frames.split_last_mut() else {
            return Ok(());
        };
        let FrameData::Memory(bytes) = &last.annex_b else {
            return Ok(());
        };
        let (file, offset) = match before.last().map(|f| &f.annex_b) {
            Some(FrameData::Spilled { file, offset, len }) => {
                (file.clone(), offset + u64::from(*len))
            }
            _ => {
                let file = tempfile::tempfile_in(&self.dir).map_err(|source| SpillError::File {
                    what: "create",
                    source,
                })?;
                (Arc::new(file), 0)
            }
        };
        let len = bytes.len() as u32;
        file.write_all_at(bytes, offset)
            .map_err(|source| SpillError::File {
                what: "write",
                source,
            })?;
        last.annex_b = FrameData::Spilled { file, offset, len };
        Ok(())
    }
}

/// Every frame's bytes, in order: spilled runs that are contiguous in one
/// file are read with one call and shared as slices of one buffer.
pub fn load(frames: &[SegmentFrame]) -> Result<Vec<Bytes>, SpillError> {
    let mut out = Vec::with_capacity(frames.len());
    let mut i = 0;
    while i < frames.len() {
        match &frames[i].annex_b {
            FrameData::Memory(b) => {
                out.push(b.clone());
                i += 1;
            }
            FrameData::Spilled { file, offset, len } => {
                let start = *offset;
                let mut end = start + u64::from(*len);
                let mut j = i + 1;
                while let Some(FrameData::Spilled {
                    file: f,
                    offset: o,
                    len: l,
                }) = frames.get(j).map(|f| &f.annex_b)
                {
                    if !Arc::ptr_eq(f, file) || *o != end {
                        break;
                    }
                    end += u64::from(*l);
                    j += 1;
                }
                let mut buf = vec![0u8; (end - start) as usize];
                file.read_exact_at(&mut buf, start)
                    .map_err(|source| SpillError::File {
                        what: "read",
                        source,
                    })?;
                let buf = Bytes::from(buf);
                for f in &frames[i..j] {
                    if let FrameData::Spilled { offset, len, .. } = &f.annex_b {
                        let a = (offset - start) as usize;
                        out.push(buf.slice(a..a + *len as usize));
                    }
                }
                i = j;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::{Codec, FrameMeta, Rational};
    use camfleet_shared::CameraId;

    fn frame(seq: u64, bytes: &[u8]) -> SegmentFrame {
        let fps = Rational::new(30, 1).unwrap();
        SegmentFrame {
            meta: FrameMeta {
                camera: CameraId::new("s/c").unwrap(),
                seq,
                capture_us: 0,
                pts_90k: fps.pts_90k(seq),
                keyframe: seq == 0,
                width: 320,
                height: 240,
                fps,
                codec: Codec::H264,
                epoch: 1,
            },
            annex_b: FrameData::Memory(Bytes::copy_from_slice(bytes)),
            partition: 0,
            offset: seq as i64,
        }
    }

    #[test]
    fn spilled_frames_read_back_identical_and_leave_no_names() {
        let dir = tempfile::tempdir().unwrap();
        let spiller = Spiller::open(dir.path()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut frames = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            frames.push(frame(i as u64, p));
            // Frame 2 stays in memory, as after a failed spill.
            if i != 2 {
                spiller.spill_last(&mut frames).unwrap();
            }
        }
        assert!(matches!(frames[2].annex_b, FrameData::Memory(_)));
        // A new file after the frame left in memory, contiguous within each.
        assert!(matches!(
            frames[1].annex_b,
            FrameData::Spilled { offset: 10, .. }
        ));
        assert!(matches!(
            frames[3].annex_b,
            FrameData::Spilled { offset: 0, .. }
        ));
        assert!(matches!(
            frames[4].annex_b,
            FrameData::Spilled { offset: 13, .. }
        ));
        let back = load(&frames).unwrap();
        assert_eq!(back.len(), 5);
        for (b, p) in back.iter().zip(&payloads) {
            assert_eq!(&b[..], &p[..]);
        }
        // Unnamed files: the directory shows nothing, and nothing is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_that_cannot_take_files_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = Spiller::open(&file).err().unwrap().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
