//! The operator's changes to the control topic — tuning and pauses — as
//! `paysync control` and the console both make them: checked by the same
//! rules as `check-config`, written with their audit record, and read back
//! before they are reported in force.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::error::KafkaError;

use super::record::{self, Guard, SETTINGS_KEY};
use super::{Control, Pause, PauseTarget, Tuning, tuning};
use crate::config::Settings;
use crate::partition::PartitionId;

/// How long a change waits to be read back.
const READ_BACK: Duration = Duration::from_secs(15);

/// Why a change was not made, or not seen in force.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Refused before anything was written; the text names the key and why.
    #[error("refused, nothing changed: {0}")]
    Refused(String),
    #[error("cannot write to the control topic: {0}")]
    Write(#[from] KafkaError),
    #[error("written, but not read back within {}s", READ_BACK.as_secs())]
    NotReadBack,
}

/// The tuned values as people read them.
pub fn describe(values: &BTreeMap<String, String>) -> String {
    if values.is_empty() {
        return "the configuration files' values".to_owned();
    }
    values
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies `KEY=VALUE` assignments (`KEY=` returns to the file's value) as
/// the next version; returns what changed.
pub async fn set(
    control: &Control,
    settings: &Settings,
    assignments: &[String],
    guard: Option<Duration>,
    by: &str,
    why: &str,
) -> Result<String, ChangeError> {
    let view = control.view();
    let mut values = view.tuning.values.clone();
    for text in assignments {
        let (key, value) =
            tuning::assignment(text).map_err(|error| ChangeError::Refused(error.to_string()))?;
        if value.is_empty() {
            values.remove(key);
        } else {
            values.insert(key.to_owned(), value);
        }
    }
    tuning::tuned(settings, &values).map_err(|error| ChangeError::Refused(error.to_string()))?;
    let version = view.tuning.version + 1;
    let tuned = Tuning {
        version,
        values: values.clone(),
        guard: guard.map(|watch| Guard::watching(view.tuning.values.clone(), watch)),
    };
    let what = format!("version {version}: {}", describe(&values));
    control
        .change(
            SETTINGS_KEY,
            Some(record::encode(&tuned)),
            by,
            what.clone(),
            why,
        )
        .await?;
    if !control
        .wait_for(READ_BACK, |view| view.tuning.version >= version)
        .await
    {
        return Err(ChangeError::NotReadBack);
    }
    Ok(what)
}

/// A pause target from its parts: everything, a park, or `TOPIC/N`.
pub fn target(
    all: bool,
    park: Option<&str>,
    partition: Option<&str>,
) -> Result<PauseTarget, String> {
    if all {
        return Ok(PauseTarget::All);
    }
    if let Some(park) = park.filter(|park| !park.is_empty()) {
        return Ok(PauseTarget::Park(park.to_owned()));
    }
    let text = partition.unwrap_or_default();
    let (topic, number) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("partition {text:?} is not TOPIC/N"))?;
    let number = number
        .parse()
        .map_err(|_| format!("partition {text:?}: {number:?} is not a partition number"))?;
    Ok(PauseTarget::Partition(PartitionId::new(topic, number)))
}

/// Pauses (or resumes) `target`; `None` when it was so already.
pub async fn pause(
    control: &Control,
    target: &PauseTarget,
    pausing: bool,
    by: &str,
    why: &str,
) -> Result<Option<String>, ChangeError> {
    if control.view().pauses.contains_key(target) == pausing {
        return Ok(None);
    }
    let value = pausing.then(|| {
        record::encode(&Pause {
            by: by.to_owned(),
            at: Utc::now(),
            why: why.to_owned(),
        })
    });
    let what = format!(
        "{} {}",
        if pausing { "paused" } else { "resumed" },
        target.describe()
    );
    control
        .change(&target.key(), value, by, what.clone(), why)
        .await?;
    if !control
        .wait_for(READ_BACK, |view| {
            view.pauses.contains_key(target) == pausing
        })
        .await
    {
        return Err(ChangeError::NotReadBack);
    }
    Ok(Some(what))
}
