//! The integration suite, one binary organised by area (librdkafka is linked
//! once for all of them). The end-to-end suite against a real broker is the
//! other binary, `tests/e2e.rs`, behind the `e2e` feature.
//!
//! * [`delivery`], [`admin`], [`replay`], [`dead_letter`], [`logs`]: the
//!   pipeline and its tools on librdkafka's mock cluster ([`harness`]).
//! * [`console`]: the console's security over HTTP: sessions, CSRF, roles, inert records.
//! * [`control`]: the control topic — tuning in place, pauses, a replay's share.
//! * [`emulator_client`]: the TOP client against the emulator.
//! * [`egress`]: the client over HTTPS with a run-time CA, and through a refusing proxy.
//! * [`event_contract`]: the event schema against the decoder.
//! * [`cli`]: the `paysync` binary as a user runs it.
//! * [`architecture`]: the rules of `ARCHITECTURE.md`, on the source text.
//! * [`deploy`]: compose, Prometheus, alert rules and dashboards against the code.
//! * [`docs`]: the documentation's links, and the README as a front door.

mod admin;
mod architecture;
mod cli;
mod console;
mod control;
mod dead_letter;
mod delivery;
mod deploy;
mod docs;
mod egress;
mod emulator_client;
mod event_contract;
mod harness;
mod logs;
mod replay;
mod support;
