//! The spool's in-memory index (sans-I/O): which frames of which camera are
//! spooled, which are in flight to Kafka, which sequence ranges were evicted,
//! and which GOP to evict next. The store (`store.rs`) holds the bytes; this
//! holds the decisions, so they can be property-tested without a disk.
//!
//! Invariants (checked by the property tests at the bottom):
//! * `live_bytes` is the sum of the spooled frames' sizes;
//! * every sequence number ever inserted is exactly one of: spooled, removed
//!   after its acknowledgement, or inside one evicted range;
//! * eviction never leaves a frame that cannot be decoded: a spooled
//!   non-keyframe whose predecessor was evicted never exists (eviction takes
//!   from the first frame not in flight up to, not including, the next
//!   keyframe);
//! * frames in flight to Kafka are never evicted (their fate is Kafka's);
//! * evicted ranges of a camera are disjoint and reported on the next frame
//!   that leaves the spool for Kafka.

#[cfg(test)]
use camfleet_shared::CameraId;
use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::HashMap;
use std::ops::RangeInclusive;

/// Why frames are missing at the edge; travels in `cf.evicted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// `spool.max_bytes` reached.
    Budget = 1,
    /// Older than `spool.max_age_s`.
    Age = 2,
    /// The spool's filesystem reached `spool.min_free_bytes`.
    DiskFloor = 3,
}

impl GapReason {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Budget),
            2 => Some(Self::Age),
            3 => Some(Self::DiskFloor),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Age => "age",
            Self::DiskFloor => "disk_floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Bytes of the stored record (key + value).
    pub bytes: u64,
    pub keyframe: bool,
    pub capture_us: u64,
    /// Flush generation the frame was written in (durable once the flusher
    /// has completed that generation).
    pub gen: u64,
    /// Handed to Kafka, acknowledgement pending.
    pub in_flight: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub last: u64,
    pub reason: GapReason,
}

/// A gap as the store must record it: the record keyed `first`, and the
/// records of `absorbed` (merged into it) deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedGap {
    pub first: u64,
    pub last: u64,
    pub reason: GapReason,
    pub absorbed: Vec<u64>,
}

#[derive(Default, Debug)]
pub struct CameraLedger {
    frames: BTreeMap<u64, Entry>,
    /// Evicted ranges not yet reported to Kafka: first -> gap.
    gaps: BTreeMap<u64, Gap>,
    live_bytes: u64,
    /// Total frames this camera lost to eviction since the spool was created
    /// (persisted by the store as part of the gap records' history).
    pub evicted_frames: u64,
}

impl CameraLedger {
    pub fn insert(&mut self, seq: u64, entry: Entry) {
        if let Some(old) = self.frames.insert(seq, entry) {
            self.live_bytes -= old.bytes;
        }
        self.live_bytes += entry.bytes;
    }

    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.frames.remove(&seq)?;
        self.live_bytes -= e.bytes;
        Some(e)
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.frames.get(&seq)
    }

    pub fn set_in_flight(&mut self, seq: u64, in_flight: bool) {
        if let Some(e) = self.frames.get_mut(&seq) {
            e.in_flight = in_flight;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.frames.keys().next().copied()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.frames.keys().next_back().copied()
    }

    pub fn oldest_capture_us(&self) -> Option<u64> {
        self.frames.values().next().map(|e| e.capture_us)
    }

    pub fn any_in_flight(&self) -> bool {
        self.frames.values().any(|e| e.in_flight)
    }

    /// Frames to send next: not in flight, durable (`gen <= durable_gen`), in
    /// sequence order, stopping at the first frame that is not yet durable so
    /// order is kept. At most `max` frames.
    pub fn sendable(&self, durable_gen: u64, max: usize) -> Vec<u64> {
        self.frames
            .iter()
            .skip_while(|(_, e)| e.in_flight)
            .take_while(|(_, e)| e.gen <= durable_gen && !e.in_flight)
            .take(max)
            .map(|(s, _)| *s)
            .collect()
    }

    /// The next unit eviction may take: from the first frame not in flight
    /// up to (excluding) the next keyframe. `None` when that unit is still
    /// open (no later keyframe yet) or nothing is spooled.
    pub fn evictable(&self) -> Option<RangeInclusive<u64>> {
        let mut it = self.frames.iter().skip_while(|(_, e)| e.in_flight);
        let (&first, _) = it.next()?;
        let (&next_key, _) = it.find(|(_, e)| e.keyframe)?;
        Some(first..=next_key - 1)
    }

    /// Removes `range` (from [`Self::evictable`]) and records it as a gap.
    /// Returns (frames, bytes) removed and the gap as recorded (see [`Self::add_gap`]).
    pub fn evict(
        &mut self,
        range: RangeInclusive<u64>,
        reason: GapReason,
    ) -> (u64, u64, RecordedGap) {
        let seqs: Vec<u64> = self.frames.range(range.clone()).map(|(s, _)| *s).collect();
        let mut bytes = 0;
        for s in &seqs {
            bytes += self.remove(*s).map_or(0, |e| e.bytes);
        }
        let gap = self.add_gap(*range.start(), *range.end(), reason);
        self.evicted_frames += seqs.len() as u64;
        (seqs.len() as u64, bytes, gap)
    }

    /// Records an evicted range. Pending gaps it touches or overlaps (an
    /// earlier eviction inside a GOP whose head was in flight then) are
    /// merged into one range per hole, which keeps `cf.evicted` short; the
    /// earliest reason wins. Returns what the store must hold.
    pub fn add_gap(&mut self, first: u64, last: u64, reason: GapReason) -> RecordedGap {
        let (mut first, mut last, mut reason) = (first, last, reason);
        let touching: Vec<u64> = self
            .gaps
            .range(..=last.saturating_add(1))
            .filter(|(f, g)| g.last.saturating_add(1) >= first && **f <= last.saturating_add(1))
            .map(|(f, _)| *f)
            .collect();
        let mut absorbed = Vec::new();
        for f in touching {
            let g = self.gaps.remove(&f).expect("listed above");
            if f < first {
                reason = g.reason;
            }
            first = first.min(f);
            last = last.max(g.last);
            absorbed.push(f);
        }
        absorbed.retain(|f| *f != first);
        self.gaps.insert(first, Gap { last, reason });
        RecordedGap {
            first,
            last,
            reason,
            absorbed,
        }
    }

    /// The unreported gap that ends right before `seq`, to ride on frame
    /// `seq`'s record. (Gaps are merged and an evicted unit always ends
    /// before a keyframe that stays, so every gap has such a frame.)
    pub fn gap_before(&self, seq: u64) -> Option<(u64, Gap)> {
        self.gaps
            .range(..seq)
            .next_back()
            .filter(|(_, g)| g.last.checked_add(1) == Some(seq))
            .map(|(f, g)| (*f, *g))
    }

    /// Forgets gaps before `seq`: the record carrying them was acknowledged.
    pub fn gaps_reported(&mut self, seq: u64) -> Vec<u64> {
        let done: Vec<u64> = self
            .gaps
            .range(..seq)
            .filter(|(_, g)| g.last < seq)
            .map(|(f, _)| *f)
            .collect();
        for f in &done {
            self.gaps.remove(f);
        }
        done
    }

    pub fn pending_gaps(&self) -> impl Iterator<Item = (u64, &Gap)> {
        self.gaps.iter().map(|(f, g)| (*f, g))
    }

    pub fn frames(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.frames.iter().map(|(s, e)| (*s, e))
    }
}

/// Every camera's ledger, as the property tests model the spool (the sink
/// keeps one `CameraLedger` per lane, and picks the oldest unit the same way).
#[cfg(test)]
#[derive(Default, Debug)]
pub struct Ledger {
    pub cameras: HashMap<CameraId, CameraLedger>,
}

#[cfg(test)]
impl Ledger {
    pub fn camera(&mut self, id: &CameraId) -> &mut CameraLedger {
        self.cameras.entry(id.clone()).or_default()
    }

    pub fn live_bytes(&self) -> u64 {
        self.cameras.values().map(|c| c.live_bytes).sum()
    }

    /// The globally oldest evictable unit: (camera, range, first frame's capture time).
    pub fn oldest_evictable(&self) -> Option<(CameraId, RangeInclusive<u64>, u64)> {
        self.cameras
            .iter()
            .filter_map(|(id, c)| {
                let r = c.evictable()?;
                let t = c.frames.get(r.start())?.capture_us;
                Some((id.clone(), r, t))
            })
            .min_by_key(|(id, _, t)| (*t, id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(keyframe: bool, t: u64) -> Entry {
        Entry {
            bytes: 100,
            keyframe,
            capture_us: t,
            gen: 0,
            in_flight: false,
        }
    }

    #[test]
    fn evicts_from_the_head_up_to_the_next_keyframe() {
        let mut c = CameraLedger::default();
        for s in 0..10 {
            c.insert(s, entry(s % 4 == 0, s));
        }
        assert_eq!(c.evictable(), Some(0..=3));
        c.set_in_flight(0, true);
        // The tail of an in-flight GOP may go; its head is Kafka's.
        assert_eq!(c.evictable(), Some(1..=3));
        let gap = RecordedGap {
            first: 1,
            last: 3,
            reason: GapReason::Budget,
            absorbed: vec![],
        };
        assert_eq!(c.evict(1..=3, GapReason::Budget), (3, 300, gap));
        assert_eq!(c.evictable(), Some(4..=7));
        c.evict(4..=7, GapReason::Budget);
        // 8, 9: the open GOP, no later keyframe yet.
        assert_eq!(c.evictable(), None);
        assert_eq!(
            c.gap_before(8),
            Some((
                1,
                Gap {
                    last: 7,
                    reason: GapReason::Budget
                }
            ))
        );
        assert_eq!(c.gap_before(9), None);
        assert_eq!(c.gaps_reported(8), vec![1]);
        assert!(c.gap_before(8).is_none());
    }

    #[test]
    fn overlapping_and_adjacent_gaps_merge_into_one_record() {
        let mut c = CameraLedger::default();
        c.add_gap(5, 9, GapReason::Age);
        let g = c.add_gap(3, 6, GapReason::Budget);
        assert_eq!(
            (g.first, g.last, g.reason, g.absorbed),
            (3, 9, GapReason::Budget, vec![5])
        );
        let g = c.add_gap(10, 12, GapReason::DiskFloor);
        assert_eq!(
            (g.first, g.last, g.reason, g.absorbed),
            (3, 12, GapReason::Budget, vec![])
        );
        assert_eq!(c.pending_gaps().count(), 1);
    }

    #[test]
    fn sendable_keeps_order_and_waits_for_durability() {
        let mut c = CameraLedger::default();
        for s in 0..5 {
            let mut e = entry(s == 0, s);
            e.gen = if s < 3 { 1 } else { 2 };
            c.insert(s, e);
        }
        assert_eq!(c.sendable(1, 100), vec![0, 1, 2]);
        c.set_in_flight(0, true);
        assert_eq!(c.sendable(2, 2), vec![1, 2]);
        assert_eq!(c.sendable(0, 100), Vec::<u64>::new());
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A new frame of camera `cam` (keyframe every `gop`).
        Frame { cam: usize },
        /// Send up to n frames of camera `cam`.
        Send { cam: usize, n: usize },
        /// Acknowledge the oldest in-flight frame of `cam`.
        Ack { cam: usize },
        /// Fail every in-flight frame of `cam`.
        Fail { cam: usize },
        /// Evict the globally oldest unit.
        Evict,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize).prop_map(|cam| Op::Frame { cam }),
            2 => (0..3usize, 1..8usize).prop_map(|(cam, n)| Op::Send { cam, n }),
            3 => (0..3usize).prop_map(|cam| Op::Ack { cam }),
            1 => (0..3usize).prop_map(|cam| Op::Fail { cam }),
            2 => Just(Op::Evict),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Random interleavings of frames, sends, acks, failures and evictions
        /// across three cameras keep the accounting and ordering invariants.
        #[test]
        fn accounting_order_and_decodability(ops in proptest::collection::vec(op(), 1..300), gop in 1..6u64) {
            let ids: Vec<CameraId> = (0..3).map(|i| CameraId::new(&format!("s/c{i}")).unwrap()).collect();
            let mut ledger = Ledger::default();
            let mut next = [0u64; 3];
            let mut acked: Vec<Vec<u64>> = vec![vec![]; 3];
            for (clock, op) in ops.into_iter().enumerate() {
                let clock = clock as u64 + 1;
                match op {
                    Op::Frame { cam } => {
                        let s = next[cam];
                        next[cam] += 1;
                        ledger.camera(&ids[cam]).insert(s, Entry { bytes: 10 + s % 7, keyframe: s % gop == 0, capture_us: clock, gen: 0, in_flight: false });
                    }
                    Op::Send { cam, n } => {
                        let c = ledger.camera(&ids[cam]);
                        for s in c.sendable(0, n) { c.set_in_flight(s, true); }
                    }
                    Op::Ack { cam } => {
                        let c = ledger.camera(&ids[cam]);
                        let first = c.frames().find(|(_, e)| e.in_flight).map(|(s, _)| s);
                        if let Some(s) = first {
                            // Acks come in order: the in-flight head is the lowest in-flight seq.
                            c.gaps_reported(s);
                            c.remove(s);
                            acked[cam].push(s);
                        }
                    }
                    Op::Fail { cam } => {
                        let c = ledger.camera(&ids[cam]);
                        let flying: Vec<u64> = c.frames().filter(|(_, e)| e.in_flight).map(|(s, _)| s).collect();
                        for s in flying { c.set_in_flight(s, false); }
                    }
                    Op::Evict => {
                        if let Some((id, r, _)) = ledger.oldest_evictable() {
                            let c = ledger.camera(&id);
                            prop_assert!(c.frames.range(r.clone()).all(|(_, e)| !e.in_flight));
                            c.evict(r, GapReason::Budget);
                        }
                    }
                }
                // live_bytes is the sum of what is spooled.
                let sum: u64 = ledger.cameras.values().flat_map(|c| c.frames.values()).map(|e| e.bytes).sum();
                prop_assert_eq!(ledger.live_bytes(), sum);
            }
            for (i, id) in ids.iter().enumerate() {
                let c = ledger.camera(id);
                // In flight frames form a prefix of the spooled frames (order kept).
                let flags: Vec<bool> = c.frames().map(|(_, e)| e.in_flight).collect();
                prop_assert!(flags.windows(2).all(|w| w[0] || !w[1]), "in-flight not a prefix: {flags:?}");
                // Acknowledged frames left in sequence order.
                prop_assert!(acked[i].windows(2).all(|w| w[0] < w[1]));
                // Every issued number is spooled, acked or evicted, exactly once.
                let evicted: Vec<u64> = {
                    let mut v = vec![];
                    let mut reported_or_pending = c.evicted_frames;
                    for s in 0..next[i] {
                        let spooled = c.get(s).is_some();
                        let was_acked = acked[i].contains(&s);
                        prop_assert!(!(spooled && was_acked));
                        if !spooled && !was_acked { v.push(s); }
                    }
                    reported_or_pending -= v.len() as u64;
                    prop_assert_eq!(reported_or_pending, 0, "evicted count matches the holes");
                    v
                };
                // Decodability: a surviving (spooled or acked) non-keyframe's
                // predecessor was not evicted.
                for s in 0..next[i] {
                    let survives = c.get(s).is_some() || acked[i].contains(&s);
                    if survives && s % gop != 0 {
                        prop_assert!(!evicted.contains(&(s - 1)), "frame {s} survives but {} was evicted", s - 1);
                    }
                }
                // Pending gaps cover only evicted numbers and are disjoint.
                let mut last_end = None;
                for (f, g) in c.pending_gaps() {
                    prop_assert!(last_end.is_none_or(|e| f > e));
                    last_end = Some(g.last);
                    for s in f..=g.last { prop_assert!(evicted.contains(&s)); }
                }
            }
        }
    }
}
