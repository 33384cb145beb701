//! The name of a partition: [`PartitionId`], used everywhere paysync speaks
//! of one (ownership, commits, dead letters, metrics labels, replay, the
//! consumed record), and its conversions from and to librdkafka's lists. A
//! leaf.

use rdkafka::TopicPartitionList;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionListElem;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: impl Into<String>, partition: i32) -> PartitionId {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition a message came from.
    pub fn of(message: &impl Message) -> PartitionId {
        PartitionId::new(message.topic(), message.partition())
    }
}

impl From<&TopicPartitionListElem<'_>> for PartitionId {
    fn from(element: &TopicPartitionListElem<'_>) -> PartitionId {
        PartitionId::new(element.topic(), element.partition())
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A list of `ids`, without offsets.
pub fn list_of(ids: &[PartitionId]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for id in ids {
        list.add_partition(&id.topic, id.partition);
    }
    list
}

/// The partitions of a list.
pub fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements().iter().map(PartitionId::from).collect()
}
