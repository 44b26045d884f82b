//! Where encoded frames go. Kafka today; the disk spool will wrap a sink so a
//! frame counts as accepted once it is either acknowledged or spooled.

pub mod kafka;

use camfleet_shared::wire::FrameMeta;
use std::future::Future;
use std::pin::Pin;

/// What the broker told us about a delivered frame (its last chunk).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
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
    #[error("Kafka did not acknowledge frame {seq} of {camera}: {message}")]
    Delivery {
        camera: String,
        seq: u64,
        message: String,
    },
}

/// Resolves when the frame is acknowledged (acks=all) or has failed for good.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<Ack, SinkError>> + Send>>;

pub trait FrameSink: Send + Sync + 'static {
    /// Hands one frame to the sink, in sequence order. Waits while the sink's
    /// queue is full (backpressure), then returns the pending acknowledgement.
    fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
    ) -> impl Future<Output = Result<AckFuture, SinkError>> + Send;

    /// Waits up to `timeout` for everything enqueued to be acknowledged.
    fn flush(&self, timeout: std::time::Duration) -> Result<(), SinkError>;
}
