//! Distributed tracing of deliveries: the producer's trace context read from
//! a message's headers ([`context`], pure), the OTLP export behind a bounded
//! queue ([`export`]), and the few calls the pipeline makes on a span
//! ([`span`]). Off unless `tracing.enabled`; then each event gets a
//! `paysync.deliver` span linked (not parented) to its producer's span, with
//! a `paysync.call` child per HTTP attempt.

pub mod context;
pub mod export;
pub mod otlp;
pub mod span;
pub mod transport;
