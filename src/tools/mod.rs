//! Development tools: everything here helps people try, measure and test
//! paysync, and none of it runs in `paysync run`.
//!
//! * [`emulator`]: a local TOP gateway with fault injection.
//! * [`local`]: the in-process stack (mock Kafka + emulator) that both use.
//! * [`demo`]: the whole bridge in one process, for a first look.
//! * [`bench`]: the benchmark, in process or against a real broker
//!   (measuring `paysync run` alone), with one report.
//! * [`latency`]: exact delivery-latency quantiles for the demo and bench summaries.

pub(crate) mod bench;
pub(crate) mod demo;
pub mod emulator;
pub(crate) mod latency;
pub mod local;
