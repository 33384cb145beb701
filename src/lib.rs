//! paysync: a Kafka consumer-group bridge that pushes parking payment and
//! refund events to Miaojie (喵街) through the Taobao Open Platform (TOP) API
//! `taobao.taojie.parking.order.payinfo.sync`.
//!
//! # Layout
//!
//! * [`event`]: the Kafka message value, decoded and validated (never panics).
//! * [`top`]: the TOP protocol — signing, the request, the response, the one
//!   classification table, and the HTTP client.
//! * [`config`]: settings from TOML and `PAYSYNC_…` variables, defaults, validation.
//! * [`emulator`]: a local TOP gateway with fault injection, for tests and demos.
//! * [`pipeline`]: the consumer group → calls → commits/dead letters loop.
//! * [`metrics`]: every exported metric, in one place.
//! * [`admin`]: `/metrics`, `/health/live`, `/health/ready`.
//! * [`demo`]: the whole bridge in one process, for a first look.
//! * [`replay`]: backfill of a bounded range through the same pipeline.
//! * [`dlq`]: reading dead letters back, and redriving them.
//! * [`bench`]: the in-process benchmark.
//! * [`local`]: the in-process stack (mock Kafka + emulator) both use.
//! * [`telemetry`]: logging set-up.
//! * [`cli`]: the `paysync` command line.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod emulator;
pub mod event;
pub mod local;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod shutdown;
pub mod telemetry;
pub mod top;
