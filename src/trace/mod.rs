//! Distributed tracing of deliveries: the producer's trace context read from
//! a message's headers ([`context`], pure), an event's trace while it is
//! delivered ([`span`]), a finished trace and its OTLP bytes ([`otlp`],
//! pure), the bounded export queue ([`export`]) and the way to the collector
//! ([`transport`]). Off unless `tracing.enabled`; then each event gets a
//! `paysync.deliver` span linked (not parented) to its producer's span, with
//! a `paysync.call` child per HTTP attempt.

pub mod context;
pub mod export;
pub mod otlp;
pub mod span;
pub mod transport;
