//! The Taobao Open Platform (TOP) protocol, as far as
//! `taobao.taojie.parking.order.payinfo.sync` needs it.
//!
//! * [`sign`]: the signature (md5, HMAC-MD5, HMAC-SHA256) over sorted parameters.
//! * [`datetime`]: the GMT+8 `yyyy-MM-dd HH:mm:ss` wall-clock format.
//! * [`request`]: the DTO's JSON and the signed request (query + form body).
//! * [`response`]: reading JSON and XML answers, wrapped or simplified.
//! * [`classify`]: the single table from outcome to disposition.
//! * [`client`]: the reqwest client that sends one call and reports its outcome.

pub mod classify;
pub mod client;
pub mod datetime;
pub mod request;
pub mod response;
pub mod sign;
