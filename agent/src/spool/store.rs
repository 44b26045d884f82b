//! Spool storage: the [`SpoolStore`] trait and its sled implementation.
//!
//! Directory layout under `spool.dir`:
//!
//! ```text
//! db/                 the live sled database (one tree, keys in spool/mod.rs)
//! db.new/             a reclaim copy being built (COMPLETE marks it finished)
//! db.old/             the previous database during a reclaim swap
//! quarantine/<utc>/   databases sled could not open, kept for inspection
//! agent.sock          control socket of the running agent (status, verify)
//! ```
//!
//! Crash recovery at open, in this order (each step is idempotent):
//! 1. `db` missing and `db.old` present: a reclaim swap was interrupted. If
//!    `db.new/COMPLETE` exists, rename `db.new` -> `db`; else `db.old` -> `db`.
//! 2. Remove `db.new` (an unfinished copy) and `db.old` (a finished swap).
//! 3. Open `db` with sled (which replays its own log). If sled fails or
//!    panics, move `db` to `quarantine/<utc>` and open a fresh one.
//! 4. Scan every record: frames whose header does not parse are deleted and
//!    counted (the checksum is checked by `verify`, not on every start).
//! 5. If the files use more than 3x the live bytes plus 16 MiB (sled leaks
//!    blob files across crash recoveries; a healthy spool is at most about
//!    2.3x), copy the live records into
//!    `db.new`, flush, write `db.new/COMPLETE`, swap as in step 1, reopen.

use super::ledger::GapReason;
use super::record::{self, Key};
use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool {path}: {message}")]
    Io { path: String, message: String },
    #[error("spool database: {0}")]
    Sled(#[from] sled::Error),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// What the spool held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per camera: (seq, header fields, record bytes), in sequence order.
    pub frames: Vec<(CameraId, u64, record::FrameHeader, u64)>,
    pub gaps: Vec<(CameraId, u64, u64, GapReason)>,
    /// Highest sequence number ever spooled per camera.
    pub high: Vec<(CameraId, u64)>,
    /// Records deleted because they could not be parsed.
    pub damaged: u64,
    /// Set when the database could not be opened and was moved aside.
    pub quarantined: Option<PathBuf>,
    /// Bytes on disk before and after a reclaim, if one ran.
    pub reclaimed: Option<(u64, u64)>,
}

/// Where spooled frames live. One implementation (sled) today; the trait is
/// the seam the spool sink is written against.
pub trait SpoolStore: Send + Sync + 'static {
    /// Stores a frame and raises the camera's high-water mark, atomically.
    /// Returns the bytes stored.
    fn put_frame(&self, meta: &FrameMeta, payload: &[u8]) -> Result<u64, StoreError>;
    /// The frame's metadata and payload, if spooled.
    fn get_frame(
        &self,
        camera: &CameraId,
        seq: u64,
    ) -> Result<Option<(FrameMeta, Vec<u8>)>, StoreError>;
    fn remove_frames(&self, camera: &CameraId, seqs: &[u64]) -> Result<(), StoreError>;
    fn put_gap(
        &self,
        camera: &CameraId,
        first: u64,
        last: u64,
        reason: GapReason,
    ) -> Result<(), StoreError>;
    fn remove_gaps(&self, camera: &CameraId, firsts: &[u64]) -> Result<(), StoreError>;
    /// Makes everything written so far durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes the store really uses on disk.
    fn disk_bytes(&self) -> u64;
    /// Free bytes on the store's filesystem (for non-root users).
    fn free_bytes(&self) -> u64;
    /// Checks every record (checksums included); one line per problem.
    fn verify(&self) -> Result<Vec<String>, StoreError>;
    /// Rewrites the live records into fresh files (bytes before, after).
    fn reclaim(&self) -> Result<(u64, u64), StoreError>;
}

pub struct SledStore {
    /// `None` only while a reclaim swaps the database.
    handles: std::sync::RwLock<Option<Handles>>,
    dir: PathBuf,
    /// Blob files already fsynced.
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

struct Handles {
    db: sled::Db,
    /// Per-camera high-water marks, in their own tree: updating a key in the
    /// frames' tree on every put rewrote its node each time (2.5x the disk
    /// writes, measured in docs/benchmarks.md).
    high: sled::Tree,
    /// sled's log file, fsynced after every flush (see [`SledStore::flush`]).
    log_file: std::fs::File,
}

impl Handles {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_sled(path).map_err(|e| io_err(path, e))?;
        Self::wrap(db, path)
    }

    fn wrap(db: sled::Db, path: &Path) -> Result<Self, StoreError> {
        let log = path.join("db");
        Ok(Self {
            high: db.open_tree(HIGH_TREE)?,
            db,
            log_file: std::fs::File::open(&log).map_err(|e| io_err(&log, e))?,
        })
    }
}

const HIGH_TREE: &[u8] = b"high";

/// Real bytes used by the files under `dir` (allocated blocks, so sparse
/// files count what they occupy).
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Free bytes available to unprivileged users on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return u64::MAX;
    }
    s.f_bavail as u64 * s.f_frsize as u64
}

fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        // The spool flushes itself on its own policy (spool/mod.rs).
        .flush_every_ms(None)
        // Frames are read back once; a large cache only costs RSS on the edge box.
        .cache_capacity(8 << 20)
        .mode(sled::Mode::LowSpace)
}

/// Opens sled, waiting out a lock that a just-dropped handle of this
/// process still holds (sled's threads release it shortly after the drop).
fn open_sled(path: &Path) -> Result<sled::Db, String> {
    let mut tries = 0;
    loop {
        match open_sled_once(path) {
            Err(e) if is_locked(&e) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn open_sled_once(path: &Path) -> Result<sled::Db, String> {
    let cfg = sled_config(path);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!(
            "sled panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn utc_stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

/// Is `e` sled refusing a database another process holds open?
pub fn is_locked(e: &str) -> bool {
    e.contains("WouldBlock") || e.contains("Resource temporarily unavailable") || e.contains("lock")
}

impl SledStore {
    /// Opens (or creates) the spool in `dir`, running the recovery steps above.
    pub fn open(dir: &Path) -> Result<(Self, Recovered), StoreError> {
        Self::open_with(dir, false)
    }

    /// Opens an existing spool to look at it (`spool status|verify` with the
    /// agent stopped): no quarantine, no reclaim, damaged records counted
    /// but kept.
    pub fn inspect(dir: &Path) -> Result<(Self, Recovered), StoreError> {
        if !dir.join("db").exists() {
            return Err(io_err(
                &dir.join("db"),
                "no spool database here (has the agent run yet?)",
            ));
        }
        Self::open_with(dir, true)
    }

    fn open_with(dir: &Path, inspect: bool) -> Result<(Self, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let (db_path, new, old) = (dir.join("db"), dir.join("db.new"), dir.join("db.old"));
        // Steps 1 and 2.
        if !inspect && !db_path.exists() && old.exists() {
            let from = if new.join("COMPLETE").exists() {
                &new
            } else {
                &old
            };
            std::fs::rename(from, &db_path).map_err(|e| io_err(from, e))?;
        }
        for leftover in [&new, &old] {
            if !inspect && leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(|e| io_err(leftover, e))?;
            }
        }
        // Step 3.
        let mut recovered = Recovered::default();
        let db = match open_sled(&db_path) {
            Ok(db) => db,
            Err(e) if is_locked(&e) => {
                return Err(io_err(
                    &db_path,
                    format!("in use by another process (is the agent running?): {e}"),
                ))
            }
            Err(e) if inspect => return Err(io_err(&db_path, format!("cannot be opened: {e}"))),
            Err(e) => {
                let q = dir.join("quarantine").join(utc_stamp());
                std::fs::create_dir_all(q.parent().expect("has parent"))
                    .map_err(|e| io_err(&q, e))?;
                std::fs::rename(&db_path, &q).map_err(|e| io_err(&db_path, e))?;
                tracing::error!(spool = %dir.display(), quarantine = %q.display(), error = %e,
                    "spool database cannot be opened; moved aside, starting a fresh spool");
                recovered.quarantined = Some(q);
                open_sled(&db_path).map_err(|e| io_err(&db_path, e))?
            }
        };
        if !inspect {
            db.insert(record::FORMAT_KEY, record::FORMAT)?;
        }
        let store = Self {
            handles: std::sync::RwLock::new(Some(Handles::wrap(db, &dir.join("db"))?)),
            dir: dir.to_path_buf(),
            synced_blobs: Default::default(),
        };
        // Step 4.
        store.scan(&mut recovered, !inspect)?;
        if inspect {
            return Ok((store, recovered));
        }
        // Step 5.
        let live: u64 = recovered.frames.iter().map(|f| f.3).sum();
        let disk = store.disk_bytes();
        if disk > 3 * live + (16 << 20) {
            recovered.reclaimed = Some(store.reclaim_now()?);
        }
        Ok((store, recovered))
    }

    /// Runs `f` with the open database (waits out a reclaim swap).
    fn with<T>(&self, f: impl FnOnce(&Handles) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.handles.read().expect("store lock");
        f(guard
            .as_ref()
            .expect("the database is open outside a reclaim"))
    }

    fn scan(&self, out: &mut Recovered, delete_damaged: bool) -> Result<(), StoreError> {
        self.with(|h| Self::scan_handles(h, out, delete_damaged))
    }

    fn scan_handles(
        h: &Handles,
        out: &mut Recovered,
        delete_damaged: bool,
    ) -> Result<(), StoreError> {
        let mut damaged_keys = Vec::new();
        for item in h.high.iter() {
            let (k, v) = item?;
            match (record::parse_key(&k), <[u8; 8]>::try_from(v.as_ref())) {
                (Ok(Key::High(cam)), Ok(b)) => out.high.push((cam, u64::from_be_bytes(b))),
                _ => {
                    tracing::warn!(key = ?k, "damaged high-water record");
                    out.damaged += 1;
                }
            }
        }
        for item in h.db.iter() {
            let (k, v) = item?;
            match record::parse_key(&k) {
                Ok(Key::Frame(cam, seq)) => match record::decode_frame(&cam, seq, &v, false) {
                    Ok(h) => out.frames.push((cam, seq, h, (k.len() + v.len()) as u64)),
                    Err(e) => {
                        tracing::warn!(error = %e, "damaged spool record deleted");
                        damaged_keys.push(k);
                    }
                },
                Ok(Key::Gap(cam, first)) => match record::decode_gap(&v) {
                    Some((last, reason)) => out.gaps.push((cam, first, last, reason)),
                    None => damaged_keys.push(k),
                },
                Ok(Key::Format) => {}
                Ok(Key::High(_)) | Err(_) => {
                    tracing::warn!(key = ?k, "unknown spool key deleted");
                    damaged_keys.push(k);
                }
            }
        }
        out.damaged += damaged_keys.len() as u64;
        if delete_damaged {
            for k in damaged_keys {
                h.db.remove(k)?;
            }
        }
        Ok(())
    }

    /// Copies the live records into a fresh database and swaps it in (the
    /// store's step 5, also run while the agent runs when the files are
    /// mostly garbage). Blocks every other store call meanwhile. Returns
    /// the bytes on disk before and after.
    pub fn reclaim_now(&self) -> Result<(u64, u64), StoreError> {
        let before = self.disk_bytes();
        let (db_path, new, old) = (
            self.dir.join("db"),
            self.dir.join("db.new"),
            self.dir.join("db.old"),
        );
        let mut guard = self.handles.write().expect("store lock");
        {
            let h = guard.as_ref().expect("open");
            h.db.flush()?;
            if new.exists() {
                std::fs::remove_dir_all(&new).map_err(|e| io_err(&new, e))?;
            }
            let fresh = open_sled(&new).map_err(|e| io_err(&new, e))?;
            for item in h.db.iter() {
                let (k, v) = item?;
                fresh.insert(k, v)?;
            }
            let fresh_high = fresh.open_tree(HIGH_TREE)?;
            for item in h.high.iter() {
                let (k, v) = item?;
                fresh_high.insert(k, v)?;
            }
            fresh.flush()?;
            // The tree keeps the database open (and locked) until it is dropped.
            drop(fresh_high);
            drop(fresh);
        }
        // sled's flush does not fsync (sync_file_range, and nothing for blobs).
        std::fs::File::open(new.join("db"))
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(&new, e))?;
        for e in std::fs::read_dir(new.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            std::fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(|err| io_err(&e.path(), err))?;
        }
        sync_dir(&new.join("blobs")).ok();
        std::fs::write(new.join("COMPLETE"), b"").map_err(|e| io_err(&new, e))?;
        sync_dir(&new)?;
        *guard = None; // closes the old database
        let swapped = (|| {
            std::fs::rename(&db_path, &old).map_err(|e| io_err(&db_path, e))?;
            std::fs::rename(&new, &db_path).map_err(|e| io_err(&new, e))?;
            sync_dir(&self.dir)?;
            std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
            let _ = std::fs::remove_file(db_path.join("COMPLETE"));
            Handles::open(&db_path)
        })();
        match swapped {
            Ok(h) => *guard = Some(h),
            Err(e) => {
                // Never leave the store closed: the recovery steps at the top
                // of this file put back whichever database is complete.
                if !db_path.exists() {
                    let from = if new.join("COMPLETE").exists() {
                        &new
                    } else {
                        &old
                    };
                    let _ = std::fs::rename(from, &db_path);
                }
                *guard = Some(Handles::open(&db_path)?);
                return Err(e);
            }
        }
        drop(guard);
        self.synced_blobs.lock().expect("blob set").clear();
        let after = self.disk_bytes();
        tracing::info!(before, after, "spool reclaimed disk space");
        Ok((before, after))
    }

    /// fsyncs blob files sled wrote since the last call, and their directory.
    /// sled 0.34 writes blobs (large nodes) with no sync at all.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.dir.join("db").join("blobs");
        let Ok(rd) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().expect("blob set");
        let mut present = std::collections::HashSet::new();
        let mut new = false;
        for e in rd.flatten() {
            let name = e.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(e.path()).and_then(|f| f.sync_all()) {
                    Ok(()) => new = true,
                    // Deleted by sled meanwhile: nothing to make durable.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(io_err(&e.path(), err)),
                }
            }
            present.insert(name);
        }
        *synced = present;
        if new {
            sync_dir(&blobs)?;
        }
        Ok(())
    }

    fn verify_records(&self) -> Result<Vec<String>, StoreError> {
        self.with(Self::verify_handles)
    }

    fn verify_handles(h: &Handles) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let mut max_frame: std::collections::HashMap<CameraId, u64> = Default::default();
        let mut high: std::collections::HashMap<CameraId, u64> = Default::default();
        for item in h.db.iter() {
            let (k, v) = item?;
            match record::parse_key(&k) {
                Ok(Key::Frame(cam, seq)) => {
                    if let Err(e) = record::decode_frame(&cam, seq, &v, true) {
                        problems.push(e.to_string());
                    }
                    let m = max_frame.entry(cam).or_insert(seq);
                    *m = (*m).max(seq);
                }
                Ok(Key::Gap(cam, first)) => match record::decode_gap(&v) {
                    Some((last, _)) if last >= first => {}
                    _ => problems.push(format!("gap record {cam} #{first}: malformed")),
                },
                Ok(Key::High(cam)) => {
                    problems.push(format!("high-water record of {cam} in the frames tree"))
                }
                Ok(Key::Format) if v.as_ref() != record::FORMAT => problems.push(format!(
                    "format marker {:?}, expected {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(record::FORMAT)
                )),
                Ok(Key::Format) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        // Marks are read after the frames: a mark is written before its frame,
        // so while the agent keeps writing, every frame seen has its mark by now.
        for item in h.high.iter() {
            let (k, v) = item?;
            match (record::parse_key(&k), <[u8; 8]>::try_from(v.as_ref())) {
                (Ok(Key::High(cam)), Ok(b)) => {
                    high.insert(cam, u64::from_be_bytes(b));
                }
                _ => problems.push(format!("high-water record {k:?}: malformed")),
            }
        }
        for (cam, m) in max_frame {
            if high.get(&cam).is_none_or(|h| *h < m) {
                problems.push(format!(
                    "camera {cam}: frame #{m} above the high-water mark {:?}",
                    high.get(&cam)
                ));
            }
        }
        Ok(problems)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl SpoolStore for SledStore {
    fn put_frame(&self, meta: &FrameMeta, payload: &[u8]) -> Result<u64, StoreError> {
        let key = record::frame_key(&meta.camera, meta.seq);
        let value = record::encode_frame(meta, payload);
        let bytes = (key.len() + value.len()) as u64;
        let hk = record::high_key(&meta.camera);
        self.with(|h| {
            let high = match h.high.get(&hk)? {
                Some(v) => <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes),
                None => 0,
            };
            // The mark first: sled recovers a prefix of its log (one log for
            // all trees), so a recovered frame always has its mark.
            if meta.seq >= high {
                h.high.insert(hk, &meta.seq.to_be_bytes())?;
            }
            h.db.insert(key, value)?;
            Ok(bytes)
        })
    }

    fn get_frame(
        &self,
        camera: &CameraId,
        seq: u64,
    ) -> Result<Option<(FrameMeta, Vec<u8>)>, StoreError> {
        let Some(v) = self.with(|h| Ok(h.db.get(record::frame_key(camera, seq))?))? else {
            return Ok(None);
        };
        let h = record::decode_frame(camera, seq, &v, true).map_err(|e| StoreError::Io {
            path: self.dir.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Some((
            h.meta(camera.clone(), seq),
            record::payload(&v).to_vec(),
        )))
    }

    fn remove_frames(&self, camera: &CameraId, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for s in seqs {
            batch.remove(record::frame_key(camera, *s));
        }
        self.with(|h| Ok(h.db.apply_batch(batch)?))
    }

    fn put_gap(
        &self,
        camera: &CameraId,
        first: u64,
        last: u64,
        reason: GapReason,
    ) -> Result<(), StoreError> {
        self.with(|h| {
            h.db.insert(
                record::gap_key(camera, first),
                record::encode_gap(last, reason),
            )?;
            Ok(())
        })
    }

    fn remove_gaps(&self, camera: &CameraId, firsts: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for f in firsts {
            batch.remove(record::gap_key(camera, *f));
        }
        self.with(|h| Ok(h.db.apply_batch(batch)?))
    }

    /// sled's own flush writes its log with `sync_file_range`, which saves
    /// neither metadata nor the drive's cache, and never syncs blob files;
    /// a power cut could lose what it called durable. So: flush, then
    /// fdatasync the log and fsync new blob files.
    fn flush(&self) -> Result<(), StoreError> {
        self.with(|h| {
            h.db.flush()?;
            h.log_file
                .sync_data()
                .map_err(|e| io_err(&self.dir.join("db/db"), e))?;
            self.sync_blobs()
        })
    }

    fn disk_bytes(&self) -> u64 {
        du(&self.dir.join("db"))
    }

    fn free_bytes(&self) -> u64 {
        free_bytes(&self.dir)
    }

    fn verify(&self) -> Result<Vec<String>, StoreError> {
        self.verify_records()
    }

    fn reclaim(&self) -> Result<(u64, u64), StoreError> {
        self.reclaim_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::{Codec, Rational};

    fn meta(seq: u64) -> FrameMeta {
        FrameMeta {
            camera: CameraId::new("s/c").unwrap(),
            seq,
            capture_us: 1000 + seq,
            pts_90k: seq * 3000,
            keyframe: seq.is_multiple_of(10),
            width: 64,
            height: 64,
            fps: Rational::new(30, 1).unwrap(),
            codec: Codec::H264,
            epoch: 1,
        }
    }

    #[test]
    fn frames_survive_reopen_and_verify_clean() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, r) = SledStore::open(dir.path()).unwrap();
            assert!(r.frames.is_empty() && r.quarantined.is_none());
            for seq in 0..20 {
                s.put_frame(&meta(seq), &vec![seq as u8; 1000]).unwrap();
            }
            s.remove_frames(&meta(0).camera, &[0, 1]).unwrap();
            s.put_gap(&meta(0).camera, 0, 1, GapReason::Budget).unwrap();
            s.flush().unwrap();
        }
        let (s, r) = SledStore::open(dir.path()).unwrap();
        assert_eq!(r.frames.len(), 18);
        assert_eq!(r.frames[0].1, 2);
        assert_eq!(r.high, vec![(meta(0).camera, 19)]);
        assert_eq!(r.gaps.len(), 1);
        let (m, p) = s.get_frame(&meta(0).camera, 5).unwrap().unwrap();
        assert_eq!((m, p), (meta(5), vec![5u8; 1000]));
        assert!(s.verify().unwrap().is_empty());
    }

    #[test]
    fn verify_names_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = SledStore::open(dir.path()).unwrap();
        s.put_frame(&meta(1), b"good").unwrap();
        let mut bad = record::encode_frame(&meta(2), b"payload");
        *bad.last_mut().unwrap() ^= 0xff;
        s.with(|h| {
            h.db.insert(record::frame_key(&meta(2).camera, 2), bad)?;
            h.high
                .insert(record::high_key(&meta(2).camera), &2u64.to_be_bytes())?;
            h.db.insert(b"Xjunk", b"?")?;
            Ok(())
        })
        .unwrap();
        let problems = s.verify().unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("s/c #2") && problems[0].contains("checksum"),
            "{problems:?}"
        );
        assert!(problems[1].contains("not a spool key"), "{problems:?}");
        // Reading the damaged frame back to send it is an error, not bad video.
        assert!(s.get_frame(&meta(2).camera, 2).is_err());
    }

    #[test]
    fn garbage_database_is_quarantined_and_a_fresh_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(db.join("blobs")).unwrap();
        std::fs::write(db.join("conf"), b"\x00garbage\xff\xfe not sled").unwrap();
        std::fs::write(db.join("db"), vec![0xa5u8; 70_000]).unwrap();
        let (s, r) = SledStore::open(dir.path()).unwrap();
        let q = r.quarantined.expect("quarantined");
        assert!(q.join("conf").exists(), "kept for inspection");
        s.put_frame(&meta(0), b"x").unwrap();
        assert!(s.verify().unwrap().is_empty());
    }

    #[test]
    fn interrupted_reclaim_swap_recovers_the_complete_copy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = SledStore::open(dir.path()).unwrap();
            s.put_frame(&meta(3), b"abc").unwrap();
            s.flush().unwrap();
        }
        // As if the process died between the two renames of a reclaim.
        let (db, new, old) = (
            dir.path().join("db"),
            dir.path().join("db.new"),
            dir.path().join("db.old"),
        );
        fs_copy(&db, &new);
        std::fs::write(new.join("COMPLETE"), b"").unwrap();
        std::fs::rename(&db, &old).unwrap();
        let (s, r) = SledStore::open(dir.path()).unwrap();
        assert_eq!(r.frames.len(), 1);
        assert!(s.get_frame(&meta(3).camera, 3).unwrap().is_some());
        assert!(!new.exists() && !old.exists());
    }

    #[test]
    fn a_bloated_database_is_reclaimed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = SledStore::open(dir.path()).unwrap();
            for seq in 0..1200 {
                s.put_frame(&meta(seq), &vec![seq as u8; 40_000]).unwrap();
            }
            s.flush().unwrap();
            s.remove_frames(&meta(0).camera, &(0..1190).collect::<Vec<_>>())
                .unwrap();
            s.flush().unwrap();
            assert!(s.disk_bytes() > 40 << 20, "{}", s.disk_bytes());
        }
        let (s, r) = SledStore::open(dir.path()).unwrap();
        let (before, after) = r.reclaimed.expect("reclaim ran");
        assert!(after < before / 4, "{before} -> {after}");
        assert_eq!(r.frames.len(), 10);
        assert!(s.get_frame(&meta(0).camera, 1195).unwrap().is_some());
        assert!(s.verify().unwrap().is_empty());
    }

    #[test]
    fn a_running_store_reclaims_in_place_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = SledStore::open(dir.path()).unwrap();
        for seq in 0..600 {
            s.put_frame(&meta(seq), &vec![seq as u8; 40_000]).unwrap();
        }
        s.remove_frames(&meta(0).camera, &(0..590).collect::<Vec<_>>())
            .unwrap();
        s.flush().unwrap();
        let (before, after) = s.reclaim_now().unwrap();
        assert!(after < before / 2, "{before} -> {after}");
        for seq in 590..600 {
            let (m, p) = s.get_frame(&meta(0).camera, seq).unwrap().unwrap();
            assert_eq!((m, p), (meta(seq), vec![seq as u8; 40_000]));
        }
        s.put_frame(&meta(600), b"after").unwrap();
        s.flush().unwrap();
        assert!(s.verify().unwrap().is_empty());
        drop(s);
        let (_, r) = SledStore::open(dir.path()).unwrap();
        assert_eq!(r.frames.len(), 11);
        assert_eq!(r.high, vec![(meta(0).camera, 600)]);
    }

    fn fs_copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                fs_copy(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
}
