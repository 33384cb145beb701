//! librdkafka plumbing, one file per concept, from the bottom up:
//!
//! * [`properties`]: the librdkafka properties paysync owns ([`properties::RESERVED`],
//!   refused in the pass-through tables with the setting to use instead) and
//!   the defaults it sets; a leaf, so configuration can check against it.
//! * [`partition`]: [`partition::PartitionId`], the one name of a partition
//!   everywhere paysync speaks of one; a leaf.
//! * [`clients`]: every `ClientConfig` paysync builds, in the same three layers.
//! * [`queries`]: blocking reads of the brokers: metadata, committed offsets
//!   and maps, partition ends.
//! * [`cluster`]: what the cluster says about itself (its group protocols,
//!   how fast it notices a dead broker), the group protocol `auto` takes,
//!   and the group settings that would let the group stop.
//!
//! Commits are not here: the pipeline's committer owns them (`pipeline::commit`).

pub mod clients;
pub mod cluster;
pub mod partition;
pub mod properties;
pub mod queries;
