//! librdkafka plumbing, one file per concept, from the bottom up (the
//! properties paysync owns and the defaults it sets are configuration:
//! [`crate::config::librdkafka`]; a partition's name is [`crate::partition`]):
//!
//! * [`record`]: a consumed message, detached ([`record::SourceRecord`]).
//! * [`clients`]: every `ClientConfig` paysync builds, in the same three layers.
//! * [`queries`]: blocking reads of the brokers: metadata, committed offsets
//!   and maps, partition ends.
//! * [`cluster`]: what the cluster says about itself (its group protocols,
//!   how fast it notices a dead broker), the group protocol `auto` takes,
//!   and the group settings that would let the group stop.
//! * [`compacted`]: the compacted topics paysync keeps its state in (the
//!   ledger, the control topic), made sure of at start.
//!
//! Commits are not here: the pipeline's committer owns them (`pipeline::commit`).

pub mod clients;
pub mod cluster;
pub mod compacted;
pub mod follow;
pub mod queries;
pub mod record;
