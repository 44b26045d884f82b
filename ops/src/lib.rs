//! `camfleet`, the ops CLI of the fleet: reads agents' status and telemetry
//! from the broker, publishes desired config documents (checked with the
//! agent's own config code first, signed when given a key), waits for the
//! agents to apply them. A separate binary rather than a collector
//! subcommand: ops run it from anywhere that reaches the broker, without a
//! collector config, Kafka or ONNX Runtime (docs/mqtt.md).

pub mod broker;
pub mod commands;
