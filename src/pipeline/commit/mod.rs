//! The commit protocol, in one home. A commit carries each partition's
//! commit point ([`crate::pipeline::tracker::CommitPoint`]: position,
//! completion map, dead-letter look-back time, encoded by
//! [`crate::commit_metadata`]) in one list ([`point`]); [`committer::Committer`]
//! decides when one goes out (one at a time, so points reach the broker in
//! the order they were taken), sends it (in the background from the main
//! loop; synchronously on revoke and at shutdown), and judges its answer by
//! one rule ([`answer`]) on every path.

pub(crate) mod answer;
pub(crate) mod committer;
pub(crate) mod point;
