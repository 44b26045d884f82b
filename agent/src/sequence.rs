//! Per-camera sequence numbers and stream epochs that survive restarts.
//!
//! State file `<data_dir>/sequence/<site>/<camera>` holds one line:
//! `next direct_bound any_bound epoch clean` (decimals; clean is 0 or 1).
//!
//! Invariants:
//! * a sequence number is never issued twice for a camera, even after a
//!   crash: a reused number would make the collector drop the new frame as
//!   already archived;
//! * every start of an encoder is a new epoch (its SPS/PPS and media clock are new).
//!
//! Numbers are exact across restarts:
//! * a clean stop records the exact next number (`clean = 1`);
//! * after a crash, the next number is the highest one that may have reached
//!   Kafka, plus one. Frames reach Kafka by two routes. Spooled frames are
//!   sent only once durable in the spool, whose high-water mark records them
//!   (`spool_high`). Frames sent straight to Kafka (the spool's `outage` mode
//!   while the broker keeps up) are covered by a lease: before frame `s` is
//!   handed to Kafka directly, `direct_bound > s` is made durable, extended
//!   [`DIRECT_LEASE`] numbers at a time. So after a crash while streaming
//!   directly, the numbers between the last frame librdkafka held and the
//!   lease bound stay unused (at most [`DIRECT_LEASE`]); after a crash
//!   while spooling, the sequence continues exactly.
//! * `any_bound` covers every issued number ([`ANY_LEASE`] at a time); it is
//!   used only when the spool was lost (quarantined), so a corrupt spool can
//!   never cause a reused number.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Numbers leased at a time for frames sent directly to Kafka (~2 s at 30 fps).
pub const DIRECT_LEASE: u64 = 64;
/// Numbers leased at a time for any frame (only read when the spool is lost).
pub const ANY_LEASE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("sequence state {path}: {message}")]
pub struct SequenceError {
    pub path: String,
    pub message: String,
}

pub struct SequenceStore {
    path: PathBuf,
    next: u64,
    direct_bound: u64,
    any_bound: u64,
    epoch: u64,
}

impl SequenceStore {
    /// Opens (or creates) the state for `camera` and starts a new epoch.
    /// `spool_high` is the highest number the spool ever held for the
    /// camera (`None` if the spool was lost and cannot tell).
    pub fn open(
        data_dir: &Path,
        site: &str,
        camera: &str,
        spool_high: Option<Option<u64>>,
    ) -> Result<Self, SequenceError> {
        let path = data_dir.join("sequence").join(site).join(camera);
        let err = |message: String| SequenceError {
            path: path.display().to_string(),
            message,
        };
        let after_spool = match spool_high {
            Some(h) => h.map_or(0, |h| h + 1),
            None => 0,
        };
        let (next, epoch) = match fs::read_to_string(&path) {
            Ok(text) => {
                let fields: Vec<u64> = text
                    .split_whitespace()
                    .map(|f| f.parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(format!("corrupt ({e}); contents {text:?}")))?;
                let (next, direct, any, epoch, clean) = match fields[..] {
                    [n, d, a, e, c] => (n, d, a, e, c == 1),
                    // The block-reservation format of earlier versions.
                    [bound, e, c] => (bound, bound, bound, e, c == 1),
                    _ => return Err(err(format!("corrupt: expected 5 fields, got {text:?}"))),
                };
                let next = match (clean, spool_high) {
                    (true, _) => next.max(after_spool),
                    (false, Some(_)) => direct.max(after_spool).max(next),
                    (false, None) => any.max(direct).max(next),
                };
                (next, epoch + 1)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (after_spool, 1),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut store = Self {
            path,
            next,
            direct_bound: next,
            any_bound: next,
            epoch,
        };
        // Until the first lease, a crash restarts exactly here.
        store.write(false)?;
        Ok(store)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The first number this run issues.
    pub fn first(&self) -> u64 {
        self.next
    }

    /// Makes sure a crash can never reuse `seq`: call before `seq` leaves the
    /// process by any route (`direct` = straight to Kafka, not via the spool).
    /// Writes the file (fsync) once per lease.
    pub fn lease(&mut self, seq: u64, direct: bool) -> Result<(), SequenceError> {
        let mut dirty = false;
        if seq >= self.any_bound {
            self.any_bound = seq + ANY_LEASE;
            dirty = true;
        }
        if direct && seq >= self.direct_bound {
            self.direct_bound = seq + DIRECT_LEASE;
            dirty = true;
        }
        if dirty {
            self.write(false)?;
        }
        Ok(())
    }

    /// Records the exact next number; call after the last frame.
    pub fn close(mut self, next: u64) -> Result<(), SequenceError> {
        self.next = next;
        self.write(true)
    }

    fn write(&mut self, clean: bool) -> Result<(), SequenceError> {
        let err = |e: std::io::Error| SequenceError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let dir = self.path.parent().expect("state path has a parent");
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        writeln!(
            f,
            "{} {} {} {} {}",
            self.next, self.direct_bound, self.any_bound, self.epoch, clean as u8
        )
        .map_err(err)?;
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

    fn open(dir: &Path, high: Option<Option<u64>>) -> SequenceStore {
        SequenceStore::open(dir, "site", "cam", high).unwrap()
    }

    #[test]
    fn exact_after_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), Some(None));
        assert_eq!((s.first(), s.epoch()), (0, 1));
        s.close(2).unwrap();
        let s = open(dir.path(), Some(None));
        assert_eq!((s.first(), s.epoch()), (2, 2));
    }

    #[test]
    fn exact_after_a_crash_while_spooling() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), Some(None));
        for seq in 0..10 {
            s.lease(seq, true).unwrap();
        }
        // Then the broker went away: 10..500 spooled, not sent directly.
        for seq in 10..500 {
            s.lease(seq, false).unwrap();
        }
        drop(s); // crash
        assert_eq!(open(dir.path(), Some(Some(499))).first(), 500);
    }

    #[test]
    fn never_reuses_a_number_sent_directly_or_lost_with_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), Some(None));
        for seq in 0..100 {
            s.lease(seq, true).unwrap();
        }
        drop(s); // crash while streaming directly: up to 99 may be in Kafka
        let s = open(dir.path(), Some(None));
        assert!(s.first() >= 100 && s.first() <= 100 + DIRECT_LEASE);
        let mut s = s;
        let start = s.first();
        for seq in start..start + 2000 {
            s.lease(seq, false).unwrap();
        }
        drop(s); // crash while spooling, and then the spool is lost
        assert!(open(dir.path(), None).first() >= start + 2000);
    }

    #[test]
    fn reads_the_earlier_block_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequence/site/cam");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "2048 7 0\n").unwrap();
        let s = open(dir.path(), Some(None));
        assert_eq!((s.first(), s.epoch()), (2048, 8));
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sequence/site/cam");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "garbage").unwrap();
        let e = SequenceStore::open(dir.path(), "site", "cam", Some(None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("sequence/site/cam"), "{e}");
    }
}
