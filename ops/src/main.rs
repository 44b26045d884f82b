use camfleet_ops::broker::{BrokerArgs, Session};
use camfleet_ops::commands::{self, PatchArgs, SetArgs, Target};
use camfleet_shared::fleet::Scope;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// camfleet ops CLI: fleet config and health over MQTT.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Broker, mqtt://host:port or mqtts://host:port (TLS).
    #[arg(
        long,
        env = "CAMFLEET_MQTT_URL",
        global = true,
        default_value = "mqtt://127.0.0.1:1883"
    )]
    url: String,
    /// First topic level (the agents' mqtt.topic_prefix).
    #[arg(long, global = true, default_value = "camfleet")]
    prefix: String,
    #[arg(long, env = "CAMFLEET_MQTT_USERNAME", global = true)]
    username: Option<String>,
    /// File holding the MQTT password (first line).
    #[arg(long, env = "CAMFLEET_MQTT_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// CA certificate (PEM) of the broker, for mqtts:// URLs.
    #[arg(long, env = "CAMFLEET_MQTT_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// The document every agent of this site applies.
    #[arg(long)]
    site: Option<String>,
    /// This agent's own document (overrides the site's).
    #[arg(long)]
    agent: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match (&self.site, &self.agent) {
            (Some(s), _) => Target {
                scope: Scope::Site,
                name: s.clone(),
            },
            (_, Some(a)) => Target {
                scope: Scope::Agent,
                name: a.clone(),
            },
            _ => unreachable!("clap requires one"),
        }
    }
}

#[derive(Args)]
struct PublishArgs {
    /// Document version; default: the retained one + 1.
    #[arg(long)]
    version: Option<u64>,
    /// Sign with this ed25519 secret key (from `camfleet keygen`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Check the full merge onto this agent.toml before publishing.
    #[arg(long)]
    base: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Agents: online/offline, applied versions, last result, key telemetry.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One agent: applied vs desired per scope, last rejection, telemetry.
    Show { agent: String },
    /// Publish a desired config (TOML or .json file, agent.toml's shape).
    Set {
        #[command(flatten)]
        target: TargetArgs,
        file: PathBuf,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Change keys of the retained document: KEY=VALUE, e.g.
    /// camera[depot/gate].encoder.bitrate_kbps=1500.
    Patch {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Wait until every agent of the target applied VERSION; exits 1 listing
    /// agents that rejected it or did not answer.
    Wait {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        version: u64,
        #[arg(long, default_value = "30s", value_parser = commands::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make an ed25519 key pair: OUT.key (secret, 0600) and OUT.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camfleet: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn real_main(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keygen { out } = &cli.command {
        return commands::keygen(out);
    }
    let broker = BrokerArgs {
        url: cli.url,
        prefix: cli.prefix,
        username: cli.username,
        password_file: cli.password_file,
        ca_file: cli.ca_file,
    };
    let mut s = Session::connect(&broker).await?;
    let result = match &cli.command {
        Command::List { json } => commands::list(&mut s, *json).await,
        Command::Show { agent } => commands::show(&mut s, agent).await,
        Command::Set {
            target,
            file,
            publish,
        } => {
            commands::set(
                &mut s,
                SetArgs {
                    target: target.target(),
                    file,
                    version: publish.version,
                    key: publish.key.as_deref(),
                    base: publish.base.as_deref(),
                },
            )
            .await
        }
        Command::Patch {
            target,
            assignments,
            publish,
        } => {
            commands::patch(
                &mut s,
                PatchArgs {
                    target: target.target(),
                    assignments,
                    version: publish.version,
                    key: publish.key.as_deref(),
                    base: publish.base.as_deref(),
                },
            )
            .await
        }
        Command::Wait {
            target,
            version,
            timeout,
        } => commands::wait(&mut s, &target.target(), *version, *timeout).await,
        Command::Keygen { .. } => unreachable!("handled above"),
    };
    s.close().await;
    result
}
