//! Where encoded frames go. The Kafka sink sends them; the disk spool
//! (`crate::spool`) wraps it, so a frame counts as accepted once it is either
//! acknowledged by Kafka or durable in the spool.

pub mod kafka;

use camfleet_shared::wire::FrameMeta;
use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;

/// How a frame was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Kafka acknowledged it (acks=all); partition and offset of its last chunk.
    Kafka { partition: i32, offset: i64 },
    /// It is durable in the disk spool and will be sent from there.
    Spooled,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka client setup failed: {0}")]
    Setup(String),
    #[error("Kafka refused frame {seq} of {camera}: {message}")]
    Refused {
        camera: String,
        seq: u64,
        message: String,
    },
    #[error("spool full: frame {seq} of {camera} evicted on arrival")]
    Evicted { camera: String, seq: u64 },
    #[error("Kafka did not acknowledge frame {seq} of {camera}: {message}")]
    Delivery {
        camera: String,
        seq: u64,
        message: String,
    },
}

/// Resolves when the frame is accepted or has failed for good.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<Delivery, SinkError>> + Send>>;

pub trait FrameSink: Send + Sync + 'static {
    /// Hands one frame to the sink, in sequence order per camera. Waits while
    /// the sink's queue is full (backpressure), then returns the pending
    /// acknowledgement. `evicted` lists the camera's sequence ranges evicted
    /// at the edge right before this frame (`cf.evicted`, usually empty).
    fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        evicted: &[RangeInclusive<u64>],
    ) -> impl Future<Output = Result<AckFuture, SinkError>> + Send;

    /// Waits up to `timeout` for everything enqueued to be accepted.
    fn flush(
        &self,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}
