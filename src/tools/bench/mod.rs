//! `paysync bench`, in two modes that report the same figures:
//!
//! * [`in_process`]: the real pipeline against librdkafka's mock cluster and
//!   the emulator, next to a raw HTTP baseline.
//! * [`broker`]: `paysync run` as a child process against a real broker, with
//!   its own CPU seconds and memory.
//! * [`report`]: the report both return and the arithmetic behind it.
//! * `open_page`: the console page a `--console` run keeps open.

pub mod broker;
pub mod in_process;
mod open_page;
pub mod report;
