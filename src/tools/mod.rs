//! Development tools: everything here helps people try, measure and test
//! paysync, and none of it runs in `paysync run`.
//!
//! * [`emulator`]: a local TOP gateway with fault injection.
//! * [`local`]: the in-process stack (mock Kafka + emulator) that both use.
//! * [`demo`]: the whole bridge in one process, for a first look.
//! * [`bench`]: the in-process benchmark; [`bench_broker`]: the same
//!   against a real broker, measuring `paysync run` alone.
//! * [`latency`]: exact delivery-latency quantiles for the demo and bench summaries.

pub mod bench;
pub mod bench_broker;
pub mod demo;
pub mod emulator;
pub mod latency;
pub mod local;
