//! paysync: a Kafka consumer-group bridge that pushes parking payment and
//! refund events to Miaojie (喵街) through the Taobao Open Platform (TOP) API
//! `taobao.taojie.parking.order.payinfo.sync`.
//!
//! # Layout
//!
//! `ARCHITECTURE.md` has the code map and the rules that keep it in shape.
//! In short, from the bottom up:
//!
//! * Leaves: [`labels`] (closed label sets), [`gmt8`] (TOP's wall clock),
//!   `backoff`, `shutdown`.
//! * `kafka::properties`, `kafka::partition`, [`commit_metadata`]: the
//!   librdkafka properties paysync owns, the name of a partition, and the
//!   wire format of what a commit carries beside its offset (low floors, so
//!   configuration checks against them).
//! * [`event`]: the Kafka message value, decoded and validated (never panics).
//! * [`top`]: the TOP protocol — signing, the request, the response, the one
//!   classification table, and the HTTP client. It knows no Kafka.
//! * [`config`]: settings from TOML and `PAYSYNC_…` variables, defaults, validation.
//! * [`metrics`]: every exported metric, in one place; it knows no engine type.
//! * `kafka`: every librdkafka client paysync builds, and the brokers' queries.
//! * [`dead_letter`]: the dead-letter contract, its writer and its reader.
//! * [`control`]: the control topic every caller on the app key shares —
//!   its leases and their shares of the rate, tuned settings, pauses.
//! * [`pipeline`]: the consumer group → calls → commits/dead letters engine.
//! * [`admin`]: `/metrics`, `/health/live`, `/health/ready`.
//! * [`status`]: the group status topic every replica publishes to.
//! * [`console`]: the operator console — the group, its dead letters and
//!   their redrive, the ledger and the control topic, behind a login.
//! * [`replay`]: the operator's backfill of a bounded range (with
//!   [`dead_letter::reader`], the operator tools).
//! * [`trace`]: the producer's trace context read from headers, spans
//!   exported over OTLP when `tracing.enabled`.
//! * [`tools`]: development tools — the emulator, the demo, the benchmark.
//! * `telemetry`: logging set-up; [`cli`]: the `paysync` command line.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub(crate) mod backoff;
pub mod cli;
pub mod commit_metadata;
pub mod config;
pub mod console;
pub mod control;
pub mod dead_letter;
pub mod event;
pub mod gmt8;
pub(crate) mod kafka;
pub mod labels;
pub mod ledger;
pub mod metrics;
pub mod partition;
pub mod pipeline;
pub mod replay;
pub(crate) mod shutdown;
pub mod status;
pub(crate) mod telemetry;
pub mod tools;
pub mod top;
pub mod trace;
