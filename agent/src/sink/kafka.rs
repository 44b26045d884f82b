//! Kafka sink: an idempotent librdkafka producer with acks=all.
//!
//! Idempotence makes the broker drop retried duplicates and keep the order of
//! each partition, so one camera's frames land in sequence order. Frames
//! larger than `max_record_bytes` are split into chunk records (see
//! `camfleet_shared::wire`), sent back to back; the frame is acknowledged when
//! its last chunk is (earlier chunks precede it in the same partition, and with
//! idempotence nothing after a failed record in a partition is written).
//!
//! Failures are classified ([`ErrorKind`], [`classify`]): delivery failures
//! are counted by kind, and connection failures (authentication, TLS, a
//! security protocol mismatch) are logged once per distinct cause by the
//! producer's [`AgentContext`], with a message naming the likely cause.

use super::{AckFuture, Delivery, ErrorKind, FrameSink, SinkError};
use camfleet_shared::config::{AgentKafkaConfig, KafkaConfig};
use camfleet_shared::wire::{self, Chunk, FrameMeta};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct KafkaSink {
    producer: FutureProducer<AgentContext>,
    context: AgentContext,
    topic: String,
    max_record_bytes: usize,
}

/// Kind of a failed delivery or refused record, from librdkafka's error code.
pub fn classify(e: &KafkaError) -> ErrorKind {
    match e.rdkafka_error_code() {
        Some(code) => classify_code(code),
        None => ErrorKind::Other,
    }
}

pub fn classify_code(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            ErrorKind::Timeout
        }
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::PreferredLeaderNotAvailable
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::NetworkException
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::Resolve
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::UnknownTopic => ErrorKind::BrokerUnavailable,
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState => ErrorKind::Authentication,
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => ErrorKind::Authorization,
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => {
            ErrorKind::MessageTooLarge
        }
        C::SSL => ErrorKind::Tls,
        _ => ErrorKind::Other,
    }
}

/// Kind of a client-level error (librdkafka's error callback): the text says
/// more than the code, which is often just "transport failure".
pub fn classify_client_error(code: Option<RDKafkaErrorCode>, reason: &str) -> ErrorKind {
    let r = reason.to_ascii_lowercase();
    if r.contains("sasl authentication error") || r.contains("authentication failed") {
        ErrorKind::Authentication
    } else if r.contains("ssl handshake failed") || r.contains("certificate verify failed") {
        ErrorKind::Tls
    } else if r.contains("security.protocol")
        || (r.contains("disconnected") && r.contains("apiversion"))
    {
        // The broker hung up before answering the first request (ApiVersion):
        // a TLS listener reading a plaintext request as a bad handshake.
        // librdkafka 2.12: "Disconnected: connection closed by peer: receive 0
        // after POLLIN (after 0ms in state APIVERSION_QUERY)"; older versions
        // add "might be caused by incorrect security.protocol configuration".
        ErrorKind::ProtocolMismatch
    } else {
        code.map_or(ErrorKind::Other, classify_code)
    }
}

/// A sentence naming the likely cause, for logs and `validate`.
pub fn explain(kind: ErrorKind, reason: &str) -> String {
    let r = reason.to_ascii_lowercase();
    let what = match kind {
        ErrorKind::Authentication => "Kafka authentication failed: the broker rejected the SASL credentials (check kafka.sasl.username, the password or password_file, and kafka.sasl.mechanism)",
        ErrorKind::Tls if r.contains("certificate verify failed") => "TLS handshake with the broker failed: its certificate is not trusted (kafka.tls.ca_file must name the CA that signed the broker's certificate, and the certificate must name the host in bootstrap_servers)",
        ErrorKind::Tls if r.contains("plaintext broker listener") || r.contains("wrong version number") || r.contains("packet length too long") => "TLS handshake with the broker failed: the port does not speak TLS (security_protocol ssl or sasl_ssl against a plaintext listener? check the port)",
        ErrorKind::Tls => "TLS handshake with the broker failed (check kafka.security_protocol and kafka.tls)",
        ErrorKind::ProtocolMismatch => "the broker closed the connection on the first request: likely a security protocol mismatch (a plaintext client on a TLS or SASL listener: check kafka.security_protocol and the port)",
        ErrorKind::Authorization => "Kafka authorization failed: the user may not write to the topic (check the broker's ACLs)",
        ErrorKind::MessageTooLarge => "the broker refused a record as too large (check kafka.max_record_bytes against the topic's max.message.bytes)",
        ErrorKind::Timeout => "Kafka did not answer in time",
        ErrorKind::BrokerUnavailable => "Kafka broker unavailable",
        ErrorKind::Other => "Kafka client error",
    };
    format!("{what}; librdkafka: {reason}")
}

/// The producer's librdkafka context: logs connection failures once per
/// distinct cause (librdkafka repeats them on every reconnect, about once a
/// second) and remembers the last one, for `validate` to report.
#[derive(Clone, Default)]
pub struct AgentContext {
    // Shared with the sink: librdkafka owns the context it was created with.
    problems: Arc<Mutex<Problems>>,
}

/// Connection problems since the last successful delivery.
#[derive(Default)]
struct Problems {
    /// Kinds already logged: "all brokers down" between two authentication
    /// failures must not make the second one news again.
    logged: std::collections::HashSet<ErrorKind>,
    last: Option<(ErrorKind, String)>,
    last_terminal: Option<(ErrorKind, String)>,
}

impl AgentContext {
    /// The last connection problem since the last successful delivery; a
    /// terminal one (the cause) before a retriable one (its consequence).
    pub fn last_problem(&self) -> Option<(ErrorKind, String)> {
        let p = self.problems.lock().expect("context lock");
        p.last_terminal.clone().or_else(|| p.last.clone())
    }

    /// After a delivery: the connection works, so the next failure is news.
    fn clear(&self) {
        let mut p = self.problems.lock().expect("context lock");
        if p.last.is_some() {
            *p = Problems::default();
        }
    }
}

impl ClientContext for AgentContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // FAIL lines repeat what `error` reports, on every reconnect; some
        // (a plaintext client on a TLS port) come only as an info-level FAIL.
        if fac == "FAIL" {
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            let kind = classify_client_error(None, message);
            if kind != ErrorKind::Other {
                self.report(kind, message);
            }
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = classify_client_error(error.rdkafka_error_code(), reason);
        metrics::counter!("camfleet_agent_kafka_errors_total", "kind" => kind.as_str())
            .increment(1);
        self.report(kind, reason);
    }
}

impl AgentContext {
    /// Logs a connection problem if its kind differs from the last one.
    fn report(&self, kind: ErrorKind, reason: &str) {
        let mut p = self.problems.lock().expect("context lock");
        let new = p.logged.insert(kind);
        p.last = Some((kind, reason.to_string()));
        if !kind.is_retriable() {
            p.last_terminal = p.last.clone();
        }
        drop(p);
        if !new {
            tracing::debug!(
                kind = kind.as_str(),
                "Kafka client error (repeated): {reason}"
            );
        } else if kind.is_retriable() {
            tracing::warn!(
                kind = kind.as_str(),
                retriable = true,
                "{}",
                explain(kind, reason)
            );
        } else {
            tracing::error!(
                kind = kind.as_str(),
                retriable = false,
                "{}",
                explain(kind, reason)
            );
        }
    }
}

/// Reads a file for the Kafka settings (`password_file`, certificates).
pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Applies a connection's librdkafka properties (bootstrap servers, security,
/// then `librdkafka_options`) to `c`; reads the password file here, at the edge.
pub fn apply_connection(c: &mut ClientConfig, config: &KafkaConfig) -> Result<(), SinkError> {
    let props = config
        .client_properties(&read_file)
        .map_err(|e| SinkError::Setup(e.to_string()))?;
    for (k, v) in props.iter() {
        c.set(k, v);
    }
    Ok(())
}

/// librdkafka settings shared by every camfleet producer.
pub fn producer_config(config: &AgentKafkaConfig) -> Result<ClientConfig, SinkError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout_ms.to_string(),
        )
        // H.264 does not compress (lz4/snappy/zstd kept 99.7-100% of the
        // bytes, docs/benchmarks.md "producer"); don't spend CPU trying.
        .set("compression.type", "none")
        // Headers + one record must fit the broker's default 1 MiB limit.
        .set(
            "message.max.bytes",
            (config.max_record_bytes + 64 * 1024).to_string(),
        )
        // ~10 s of 8 Mbit/s video per camera may wait in memory for the broker.
        .set("queue.buffering.max.kbytes", "65536")
        // Retry a lost broker at least every second (librdkafka: up to 10 s),
        // so a spool starts draining within a second of the link returning.
        .set("reconnect.backoff.max.ms", "1000")
        .set("client.id", "camfleet-agent");
    // Info, whatever the log filter: a plaintext client on a TLS listener
    // shows only as an info-level FAIL line, which AgentContext::log
    // classifies (and the tracing filter still decides what is printed).
    c.set_log_level(RDKafkaLogLevel::Info);
    // Last: bootstrap servers, security, and librdkafka_options (which may
    // override any of the above).
    apply_connection(&mut c, &config.connection)?;
    Ok(c)
}

impl KafkaSink {
    pub fn new(config: &AgentKafkaConfig) -> Result<Self, SinkError> {
        let context = AgentContext::default();
        let producer: FutureProducer<AgentContext> = producer_config(config)?
            .create_with_context(context.clone())
            .map_err(|e| SinkError::Setup(e.to_string()))?;
        Ok(Self {
            producer,
            context,
            topic: config.connection.topic.clone(),
            max_record_bytes: config.max_record_bytes,
        })
    }

    /// For telemetry: `{"state":"ok"}`, or the problem librdkafka reported
    /// since the last acknowledged frame (`{"state":"authentication",...}`).
    pub fn connection_state(&self) -> serde_json::Value {
        match self.context.last_problem() {
            None => serde_json::json!({"state": "ok"}),
            Some((kind, message)) => {
                serde_json::json!({"state": kind.as_str(), "message": message})
            }
        }
    }

    /// Checks the broker answers and the topic exists (for `validate`). A
    /// failure names the connection problem librdkafka reported meanwhile
    /// (authentication, TLS, protocol mismatch), not just "transport failure".
    pub fn check_topic(&self, timeout: Duration) -> Result<usize, SinkError> {
        // In slices, so a terminal cause (bad password, untrusted CA) fails
        // within about a second instead of after the whole timeout.
        let deadline = std::time::Instant::now() + timeout;
        let md = loop {
            let slice = deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(Duration::from_secs(1));
            match self
                .producer
                .client()
                .fetch_metadata(Some(&self.topic), slice)
            {
                Ok(md) => break md,
                Err(e) => {
                    let problem = self.context.last_problem();
                    let terminal = problem.as_ref().is_some_and(|(k, _)| !k.is_retriable());
                    if terminal || std::time::Instant::now() >= deadline {
                        return Err(match problem {
                            Some((kind, reason)) => SinkError::Setup(format!(
                                "metadata for {}: {} ({kind})",
                                self.topic,
                                explain(kind, &reason)
                            )),
                            None => SinkError::Setup(format!("metadata for {}: {e}", self.topic)),
                        });
                    }
                }
            }
        };
        let topic = md
            .topics()
            .first()
            .ok_or_else(|| SinkError::Setup(format!("topic {} not in metadata", self.topic)))?;
        if let Some(err) = topic.error() {
            return Err(SinkError::Setup(format!(
                "topic {}: {:?}",
                self.topic,
                RDKafkaErrorCode::from(err)
            )));
        }
        Ok(topic.partitions().len())
    }
}

impl FrameSink for KafkaSink {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let evicted = (!evicted.is_empty()).then(|| wire::format_evicted(evicted));
        let ranges = wire::chunk_ranges(payload.len(), self.max_record_bytes);
        let count = ranges.len() as u32;
        let key = meta.camera.as_str();
        let mut last = None;
        for (index, range) in ranges.into_iter().enumerate() {
            let chunk = (count > 1).then_some(Chunk {
                index: index as u32,
                count,
            });
            let mut headers = OwnedHeaders::new_with_capacity(12);
            for (name, value) in wire::headers(meta, chunk) {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            if let Some(e) = &evicted {
                headers = headers.insert(Header {
                    key: wire::header::EVICTED,
                    value: Some(e.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(&payload[range])
                .headers(headers)
                .timestamp((meta.capture_us / 1000) as i64);
            // Wait out a full local queue (backpressure); give up on errors
            // retrying cannot fix (e.g. record too large).
            let mut waited = 0u32;
            let future = loop {
                match self.producer.send_result(record) {
                    Ok(f) => break f,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        waited += 1;
                        tokio::time::sleep(Duration::from_millis(5.min(waited as u64))).await;
                    }
                    Err((e, _)) => {
                        let kind = classify(&e);
                        count_delivery_error(kind);
                        return Err(SinkError::Refused {
                            camera: meta.camera.to_string(),
                            seq: meta.seq,
                            kind,
                            message: e.to_string(),
                        });
                    }
                }
            };
            last = Some(future);
        }
        let future = last.expect("chunk_ranges returns at least one range");
        let (camera, seq) = (meta.camera.to_string(), meta.seq);
        let context = self.context.clone();
        Ok(Box::pin(async move {
            match future.await {
                Ok(Ok(d)) => {
                    context.clear();
                    Ok(Delivery::Kafka {
                        partition: d.partition,
                        offset: d.offset,
                    })
                }
                Ok(Err((e, _))) => {
                    let kind = classify(&e);
                    count_delivery_error(kind);
                    Err(SinkError::Delivery {
                        camera,
                        seq,
                        kind,
                        message: e.to_string(),
                    })
                }
                Err(_) => {
                    count_delivery_error(ErrorKind::Other);
                    Err(SinkError::Delivery {
                        camera,
                        seq,
                        kind: ErrorKind::Other,
                        message: "producer dropped before delivery report".into(),
                    })
                }
            }
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        // librdkafka's flush blocks; keep it off the async workers.
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| SinkError::Setup(format!("flush task: {e}")))?
            .map_err(|e| SinkError::Setup(format!("flush: {e}")))
    }
}

fn count_delivery_error(kind: ErrorKind) {
    metrics::counter!(
        "camfleet_agent_delivery_errors_total",
        "kind" => kind.as_str(),
        "retriable" => if kind.is_retriable() { "true" } else { "false" }
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    #[test]
    fn delivery_errors_are_classified_retriable_or_terminal() {
        let cases = [
            (C::MessageTimedOut, ErrorKind::Timeout, true),
            (C::RequestTimedOut, ErrorKind::Timeout, true),
            (
                C::BrokerTransportFailure,
                ErrorKind::BrokerUnavailable,
                true,
            ),
            (C::AllBrokersDown, ErrorKind::BrokerUnavailable, true),
            (C::NotLeaderForPartition, ErrorKind::BrokerUnavailable, true),
            (C::NotEnoughReplicas, ErrorKind::BrokerUnavailable, true),
            (C::Authentication, ErrorKind::Authentication, false),
            (
                C::SaslAuthenticationFailed,
                ErrorKind::Authentication,
                false,
            ),
            (C::TopicAuthorizationFailed, ErrorKind::Authorization, false),
            (
                C::ClusterAuthorizationFailed,
                ErrorKind::Authorization,
                false,
            ),
            (C::MessageSizeTooLarge, ErrorKind::MessageTooLarge, false),
            (C::MessageBatchTooLarge, ErrorKind::MessageTooLarge, false),
            (C::SSL, ErrorKind::Tls, false),
            (C::InvalidRecord, ErrorKind::Other, false),
        ];
        for (code, kind, retriable) in cases {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(classify(&e), kind, "{code:?}");
            assert_eq!(kind.is_retriable(), retriable, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), ErrorKind::Other);
    }

    #[test]
    fn client_errors_are_classified_by_their_text() {
        let auth = "sasl_ssl://127.0.0.1:23096/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 308ms in state AUTH_REQ)";
        let tls = "sasl_ssl://127.0.0.1:23096/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified";
        let plain = "127.0.0.1:23096/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request)";
        let plain_2_12 = "127.0.0.1:23096/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(
            classify_client_error(None, plain_2_12),
            ErrorKind::ProtocolMismatch
        );
        let down = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused";
        let t = Some(C::BrokerTransportFailure);
        assert_eq!(
            classify_client_error(Some(C::Authentication), auth),
            ErrorKind::Authentication
        );
        assert_eq!(classify_client_error(t, auth), ErrorKind::Authentication);
        assert_eq!(classify_client_error(t, tls), ErrorKind::Tls);
        assert_eq!(classify_client_error(t, plain), ErrorKind::ProtocolMismatch);
        assert_eq!(classify_client_error(t, down), ErrorKind::BrokerUnavailable);
        assert_eq!(classify_client_error(None, "?"), ErrorKind::Other);
        assert!(explain(ErrorKind::Authentication, auth).starts_with("Kafka authentication failed"));
        assert!(explain(ErrorKind::Tls, tls).contains("not trusted"));
        assert!(explain(ErrorKind::ProtocolMismatch, plain).contains("security protocol mismatch"));
        let tls_to_plain = "sasl_ssl://127.0.0.1:23092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker listener? (after 0ms in state SSL_HANDSHAKE)";
        assert_eq!(classify_client_error(t, tls_to_plain), ErrorKind::Tls);
        assert!(explain(ErrorKind::Tls, tls_to_plain).contains("the port does not speak TLS"));
    }

    #[test]
    fn the_context_remembers_the_cause_over_its_consequences_until_a_delivery() {
        let c = AgentContext::default();
        assert_eq!(c.last_problem(), None);
        c.report(ErrorKind::Authentication, "bad password");
        c.report(ErrorKind::BrokerUnavailable, "1/1 brokers are down");
        assert_eq!(
            c.last_problem(),
            Some((ErrorKind::Authentication, "bad password".into()))
        );
        assert_eq!(c.problems.lock().unwrap().logged.len(), 2);
        c.clear();
        assert_eq!(c.last_problem(), None);
        c.report(ErrorKind::Timeout, "slow");
        assert_eq!(c.last_problem(), Some((ErrorKind::Timeout, "slow".into())));
    }
}
