//! Where encoded frames go. The Kafka sink sends them; the disk spool
//! (`crate::spool`) wraps it, so a frame counts as accepted once it is either
//! acknowledged by Kafka or durable in the spool.

pub mod kafka;
pub mod switch;

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
    #[error("Kafka refused frame {seq} of {camera} ({kind}): {message}")]
    Refused {
        camera: String,
        seq: u64,
        kind: ErrorKind,
        message: String,
    },
    #[error("spool full: frame {seq} of {camera} evicted on arrival")]
    Evicted { camera: String, seq: u64 },
    #[error("Kafka did not acknowledge frame {seq} of {camera} ({kind}): {message}")]
    Delivery {
        camera: String,
        seq: u64,
        kind: ErrorKind,
        message: String,
    },
}

impl SinkError {
    /// What kind of failure a refused or undelivered frame met.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            SinkError::Refused { kind, .. } | SinkError::Delivery { kind, .. } => Some(*kind),
            SinkError::Setup(_) | SinkError::Evicted { .. } => None,
        }
    }
}

/// Why Kafka did not take a frame (or a connection failed), in the manner of
/// Vector's Kafka sink: each kind is retriable (the cause is transient and the
/// same frame can succeed later unchanged) or terminal (nothing succeeds until
/// an operator changes the config, the credentials, the ACLs or the broker).
/// Either way the spool keeps the frame (docs/spool.md); the kind decides how
/// loudly it is logged and is the `kind` label of
/// `camfleet_agent_delivery_errors_total`. See docs/security.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No acknowledgement in time (message or request timeout). Retriable.
    Timeout,
    /// Broker down, unreachable, not leader, not enough in-sync replicas.
    /// Retriable: leadership moves and brokers come back.
    BrokerUnavailable,
    /// SASL credentials or mechanism rejected. Terminal: needs new credentials.
    Authentication,
    /// Authenticated, but ACLs deny the topic or cluster. Terminal.
    Authorization,
    /// Record or batch larger than the broker accepts. Terminal for this
    /// record: the same bytes are refused again.
    MessageTooLarge,
    /// TLS handshake failed (untrusted CA, hostname mismatch). Terminal.
    Tls,
    /// The broker hung up on the first request: most often a plaintext
    /// client on a TLS or SASL listener (`security_protocol` mismatch). Terminal.
    ProtocolMismatch,
    /// Anything else. Terminal (unknown causes are not retried blindly by
    /// librdkafka either).
    Other,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::BrokerUnavailable => "broker_unavailable",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Authorization => "authorization",
            ErrorKind::MessageTooLarge => "message_too_large",
            ErrorKind::Tls => "tls",
            ErrorKind::ProtocolMismatch => "protocol_mismatch",
            ErrorKind::Other => "other",
        }
    }

    /// Whether waiting alone can fix it.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::BrokerUnavailable)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// A sink for unit tests: acknowledges at once and records what it was given.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub frames: std::sync::Mutex<Vec<FrameMeta>>,
}

#[cfg(test)]
impl FrameSink for Recorder {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        _payload: &[u8],
        _evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        self.frames.lock().unwrap().push(meta.clone());
        let seq = meta.seq;
        Ok(Box::pin(async move {
            Ok(Delivery::Kafka {
                partition: 0,
                offset: seq as i64,
            })
        }))
    }

    async fn flush(&self, _: std::time::Duration) -> Result<(), SinkError> {
        Ok(())
    }
}
