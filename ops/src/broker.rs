//! The ops CLI's MQTT session: connect, subscribe, read what the broker
//! holds (retained status, telemetry, desired documents), publish retained.

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant};

/// Where the broker is and how to log in.
#[derive(Clone, Debug)]
pub struct BrokerArgs {
    pub url: String,
    pub prefix: String,
    pub username: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    /// CA (PEM) of the broker's certificate for mqtts://; absent = system CAs.
    pub ca_file: Option<std::path::PathBuf>,
}

pub struct Session {
    pub client: AsyncClient,
    events: EventLoop,
    pub prefix: String,
}

impl Session {
    /// Connects and waits for the broker's ConnAck (10 s at most).
    pub async fn connect(args: &BrokerArgs) -> anyhow::Result<Self> {
        let tls = args.url.starts_with("mqtts://");
        let rest = args
            .url
            .strip_prefix("mqtt://")
            .or_else(|| args.url.strip_prefix("mqtts://"))
            .with_context(|| format!("--url {:?}: use mqtt://host:port or mqtts://", args.url))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("--url {:?}: use mqtt://host:port", args.url))?;
        let id = format!(
            "camfleet-ops-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(16 << 20, 1 << 20);
        if tls {
            let config = match &args.ca_file {
                Some(f) => rumqttc::TlsConfiguration::SimpleNative {
                    ca: std::fs::read(f).with_context(|| format!("--ca-file {}", f.display()))?,
                    client_auth: None,
                },
                None => rumqttc::TlsConfiguration::Native,
            };
            options.set_transport(rumqttc::Transport::tls_with_config(config));
        }
        if let Some(user) = &args.username {
            let password = match &args.password_file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("--password-file {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("cannot connect to {}: {e}", args.url),
                Err(_) => bail!("no answer from {} within 10 s", args.url),
            }
        }
        Ok(Self {
            client,
            events,
            prefix: args.prefix.clone(),
        })
    }

    pub async fn subscribe(&mut self, topics: &[String]) -> anyhow::Result<()> {
        for t in topics {
            self.client.subscribe(t, QoS::AtLeastOnce).await?;
        }
        Ok(())
    }

    /// The next message, or `None` when nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.poll()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    return Ok(Some((p.topic.clone(), p.payload.to_vec())))
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(s)))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        bail!("the broker refused a subscription (ACL?)");
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("MQTT connection: {e}"),
            }
        }
    }

    /// Everything retained on `topics`: messages until `idle` passes with
    /// none (retained messages arrive right after the subscription).
    pub async fn retained(
        &mut self,
        topics: &[String],
        idle: Duration,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.subscribe(topics).await?;
        let mut out = Vec::new();
        let hard = Instant::now() + Duration::from_secs(30);
        while Instant::now() < hard {
            match self.next(idle).await? {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }

    /// Publishes retained at QoS 1 and waits for the broker's PubAck.
    pub async fn publish_retained(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("publish to {topic}: {e}"),
                Err(_) => bail!("publish to {topic}: no PubAck within 10 s"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.events.poll()).await;
    }
}
