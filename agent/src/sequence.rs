//! Per-camera sequence numbers and stream epochs that survive restarts.
//!
//! State file `<data_dir>/sequence/<site>/<camera>` holds one line:
//! `next_seq epoch clean` (decimal, decimal, 0|1).
//!
//! Invariants:
//! * a sequence number is never issued twice for a camera, even after a crash;
//! * every start of an encoder is a new epoch (its SPS/PPS and media clock are new).
//!
//! Because writing the file for every frame would cost an fsync per frame,
//! numbers are reserved in blocks: before issuing a number at or past the
//! reserved bound, the bound is moved `BLOCK` ahead and made durable (write
//! temp file, fsync, rename, fsync dir). A clean shutdown records the exact next
//! number (`clean = 1`). After a crash the next start begins at the reserved
//! bound, leaving a visible, counted gap of unused numbers rather than reusing
//! any. (The disk spool will make this exact by storing numbers with frames.)

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("sequence state {path}: {message}")]
pub struct SequenceError {
    pub path: String,
    pub message: String,
}

pub struct SequenceStore {
    path: PathBuf,
    next: u64,
    reserved: u64,
    epoch: u64,
}

impl SequenceStore {
    /// Opens (or creates) the state for `camera` and starts a new epoch.
    pub fn open(data_dir: &Path, site: &str, camera: &str) -> Result<Self, SequenceError> {
        let path = data_dir.join("sequence").join(site).join(camera);
        let err = |message: String| SequenceError {
            path: path.display().to_string(),
            message,
        };
        let (next, epoch) = match fs::read_to_string(&path) {
            Ok(text) => {
                let fields: Vec<u64> = text
                    .split_whitespace()
                    .map(|f| f.parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(format!("corrupt ({e}); contents {text:?}")))?;
                match fields[..] {
                    [next, epoch, _clean] => (next, epoch + 1),
                    _ => return Err(err(format!("corrupt: expected 3 fields, got {text:?}"))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 1),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut store = Self {
            path,
            next,
            reserved: next,
            epoch,
        };
        store.reserve()?;
        Ok(store)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The number the next call to [`Self::issue`] will issue.
    pub fn peek_next(&self) -> u64 {
        self.next
    }

    /// Issues the next sequence number.
    pub fn issue(&mut self) -> Result<u64, SequenceError> {
        if self.next >= self.reserved {
            self.reserve()?;
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Records the exact next number; call after the last frame.
    pub fn close(mut self) -> Result<(), SequenceError> {
        self.reserved = self.next;
        self.write(self.next, true)
    }

    fn reserve(&mut self) -> Result<(), SequenceError> {
        self.write(self.next + BLOCK, false)?;
        self.reserved = self.next + BLOCK;
        Ok(())
    }

    fn write(&mut self, bound: u64, clean: bool) -> Result<(), SequenceError> {
        let err = |e: std::io::Error| SequenceError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let dir = self.path.parent().expect("state path has a parent");
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        writeln!(f, "{bound} {} {}", self.epoch, clean as u8).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_after_clean_close_and_never_reuses_after_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SequenceStore::open(dir.path(), "site", "cam").unwrap();
        assert_eq!(s.epoch(), 1);
        assert_eq!((s.issue().unwrap(), s.issue().unwrap()), (0, 1));
        s.close().unwrap();

        let mut s = SequenceStore::open(dir.path(), "site", "cam").unwrap();
        assert_eq!(s.epoch(), 2);
        assert_eq!(s.issue().unwrap(), 2);
        for _ in 0..BLOCK + 5 {
            s.issue().unwrap();
        }
        let issued = s.issue().unwrap();
        drop(s); // a crash: no close

        let mut s = SequenceStore::open(dir.path(), "site", "cam").unwrap();
        assert_eq!(s.epoch(), 3);
        assert!(s.issue().unwrap() > issued);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequence/site/cam");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "garbage").unwrap();
        let e = SequenceStore::open(dir.path(), "site", "cam")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sequence/site/cam"), "{e}");
    }
}
