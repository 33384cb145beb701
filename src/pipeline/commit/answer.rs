//! What a commit's answer means, one rule for every path (the main loop's
//! background commits, the revoke's and the final synchronous ones). Pure.

use rdkafka::TopicPartitionList;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

/// The meaning of a commit's result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// Stored; or nothing new was stored since the last commit (the group is
    /// up to date, which is what "time since the last commit" is about).
    Committed,
    /// The broker refused a completion map as too large
    /// (`offset.metadata.max.bytes`): commit positions alone from now on.
    MapTooLarge,
    /// The coordinator is moving, loading or briefly unreachable: the same
    /// commit may succeed soon.
    Retriable(KafkaError),
    /// Anything else.
    Failed(KafkaError),
}

/// Judges a commit of `list` that ended with `result`.
pub(crate) fn answer(list: &TopicPartitionList, result: &KafkaResult<()>) -> Answer {
    if too_large(list, result) {
        return Answer::MapTooLarge;
    }
    match result {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Answer::Committed,
        Err(error) if retriable(error) => Answer::Retriable(error.clone()),
        Err(error) => Answer::Failed(error.clone()),
    }
}

/// Whether the broker refused a completion map as too large, for the whole
/// request or one of its partitions.
fn too_large(list: &TopicPartitionList, result: &KafkaResult<()>) -> bool {
    const TOO_LARGE: RDKafkaErrorCode = RDKafkaErrorCode::OffsetMetadataTooLarge;
    list.elements().iter().any(|e| {
        matches!(
            e.error(),
            Err(KafkaError::OffsetFetch(TOO_LARGE)) | Err(KafkaError::ConsumerCommit(TOO_LARGE))
        )
    }) || matches!(result, Err(KafkaError::ConsumerCommit(TOO_LARGE)))
}

/// Whether a failed commit may succeed if tried again soon.
fn retriable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            CoordinatorNotAvailable
                | NotCoordinator
                | CoordinatorLoadInProgress
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | NetworkException
                | WaitingForCoordinator
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_error(code: RDKafkaErrorCode) -> KafkaResult<()> {
        Err(KafkaError::ConsumerCommit(code))
    }

    #[test]
    fn every_path_reads_a_commit_the_same_way() {
        let list = TopicPartitionList::new();
        assert_eq!(answer(&list, &Ok(())), Answer::Committed);
        assert_eq!(
            answer(&list, &commit_error(RDKafkaErrorCode::NoOffset)),
            Answer::Committed,
            "nothing new to store"
        );
        assert_eq!(
            answer(
                &list,
                &commit_error(RDKafkaErrorCode::OffsetMetadataTooLarge)
            ),
            Answer::MapTooLarge
        );
        assert!(matches!(
            answer(&list, &commit_error(RDKafkaErrorCode::NotCoordinator)),
            Answer::Retriable(_)
        ));
        assert!(matches!(
            answer(&list, &commit_error(RDKafkaErrorCode::IllegalGeneration)),
            Answer::Failed(_)
        ));
    }
}
