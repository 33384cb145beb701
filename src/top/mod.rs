//! The Taobao Open Platform (TOP) protocol, as far as
//! `taobao.taojie.parking.order.payinfo.sync` needs it (`docs/top-protocol.md`).
//! It knows nothing of Kafka: it turns a [`crate::event::PaymentEvent`] into a
//! signed call and an answer into a disposition.
//!
//! * [`sign`]: the signature (md5, HMAC-MD5, HMAC-SHA256) over sorted parameters.
//! * [`request`]: the DTO's JSON and the signed request (query + form body).
//! * [`response`]: reading JSON and XML answers, wrapped or simplified.
//! * [`outcome`]: what happened to one call.
//! * [`classify`]: the single table from outcome to disposition.
//! * [`egress`]: the forward proxy and the trusted roots, decided once for the gateway.
//! * [`client`]: the HTTP client (reqwest, rustls) that sends one call and reports its outcome.

pub mod classify;
pub mod client;
pub mod egress;
pub(crate) mod outcome;
pub mod request;
pub mod response;
pub mod sign;
