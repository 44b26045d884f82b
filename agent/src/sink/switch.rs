//! A sink whose inner client can be replaced while the agent runs: a fleet
//! config that changes the Kafka address or credentials gets a new producer
//! (`crate::app` stops the cameras and flushes before the swap, so a
//! camera's frames never travel through two producers at once).

use super::{AckFuture, FrameSink, SinkError};
use camfleet_shared::wire::FrameMeta;
use std::ops::RangeInclusive;
use std::sync::{Arc, RwLock};

pub struct SwitchSink<S> {
    current: RwLock<Arc<S>>,
}

impl<S: FrameSink> SwitchSink<S> {
    pub fn new(inner: S) -> Self {
        Self {
            current: RwLock::new(Arc::new(inner)),
        }
    }

    pub fn current(&self) -> Arc<S> {
        self.current.read().expect("switch lock").clone()
    }

    /// Installs `inner`; returns the previous client (its pending
    /// acknowledgements still resolve while someone holds it).
    pub fn replace(&self, inner: S) -> Arc<S> {
        std::mem::replace(
            &mut *self.current.write().expect("switch lock"),
            Arc::new(inner),
        )
    }
}

impl<S: FrameSink> FrameSink for SwitchSink<S> {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let inner = self.current();
        inner.enqueue(meta, payload, evicted).await
    }

    async fn flush(&self, timeout: std::time::Duration) -> Result<(), SinkError> {
        let inner = self.current();
        inner.flush(timeout).await
    }
}
