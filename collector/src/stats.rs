//! Collector counters: Prometheus metrics (`camfleet_collector_*_total`, no
//! per-camera labels, to keep cardinality low) plus the same numbers kept
//! locally for the exit summary.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($field:ident => $metric:literal, $help:literal;)*) => {
        #[derive(Default, Debug)]
        pub struct Stats { $(pub $field: AtomicU64,)* }

        impl Stats {
            $(
                pub fn $field(&self, n: u64) {
                    self.$field.fetch_add(n, Relaxed);
                    metrics::counter!($metric).increment(n);
                }
            )*

            /// Registers help texts with the metrics recorder, and every
            /// counter at 0 so dashboards see a series before the first event.
            pub fn describe() {
                $(
                    metrics::describe_counter!($metric, $help);
                    metrics::counter!($metric).increment(0);
                )*
            }

            pub fn to_json(&self) -> serde_json::Value {
                serde_json::json!({ $( stringify!($field): self.$field.load(Relaxed), )* })
            }
        }
    };
}

counters! {
    records_consumed => "camfleet_collector_records_consumed_total", "Kafka records read from the video topic.";
    frames_accepted => "camfleet_collector_frames_accepted_total", "Whole frames accepted for archiving.";
    frames_archived => "camfleet_collector_frames_archived_total", "Frames durable in the archive.";
    segments_written => "camfleet_collector_segments_written_total", "Segments durable in the archive.";
    archive_bytes => "camfleet_collector_archive_bytes_total", "Bytes of MPEG-TS written to the archive.";
    archive_retries => "camfleet_collector_archive_retries_total", "Failed archive writes that were retried.";
    sequence_gaps => "camfleet_collector_sequence_gaps_total", "Places where a camera's sequence skipped numbers.";
    sequence_gap_frames => "camfleet_collector_sequence_gap_frames_total", "Sequence numbers missing in those gaps.";
    sequence_gap_frames_evicted_at_edge => "camfleet_collector_sequence_gap_frames_evicted_at_edge_total", "Missing sequence numbers the agent reported as evicted from its spool (cf.evicted).";
    malformed_evicted_headers => "camfleet_collector_malformed_evicted_headers_total", "cf.evicted headers that could not be parsed (the frame was kept).";
    frames_duplicate => "camfleet_collector_frames_duplicate_total", "Frames received twice and dropped.";
    frames_already_archived => "camfleet_collector_frames_already_archived_total", "Replayed frames skipped because they were archived before.";
    dead_letter_records => "camfleet_collector_dead_letter_records_total", "Malformed records sent to the dead-letter topic.";
    offset_commits => "camfleet_collector_offset_commits_total", "Offset commits sent to Kafka.";
    spill_failures => "camfleet_collector_spill_failures_total", "Frames kept in memory because their spill file could not be written.";
    index_writes => "camfleet_collector_index_writes_total", "Segment rows written to the Parquet index (each rewrites the hour's file).";
    retention_segments_deleted => "camfleet_collector_retention_segments_deleted_total", "Segments deleted by retention (age or size limits).";
    retention_bytes_deleted => "camfleet_collector_retention_bytes_deleted_total", "Bytes of segments deleted by retention.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_the_edge_eviction_counters() {
        let s = Stats::default();
        s.sequence_gap_frames(7);
        s.sequence_gap_frames_evicted_at_edge(5);
        s.malformed_evicted_headers(1);
        let j = s.to_json();
        assert_eq!(j["sequence_gap_frames"], 7, "{j}");
        assert_eq!(j["sequence_gap_frames_evicted_at_edge"], 5, "{j}");
        assert_eq!(j["malformed_evicted_headers"], 1, "{j}");
    }
}
