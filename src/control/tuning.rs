//! The settings that change while paysync runs (`paysync control set`):
//! which they are, their short names, and how a set of them applies over a
//! configuration — checked by the same rules as `paysync check-config`.
//! Everything else needs a restart (a new consumer, a new client).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ConfigError, DeliverySettings, RateLimitMode, Settings};

/// Short name → full key of every setting that can change in place.
pub const TUNABLE: &[(&str, &str)] = &[
    ("rate", "delivery.rate_limit_per_sec"),
    ("min_rate", "delivery.rate_limit_min_per_sec"),
    ("mode", "delivery.rate_limit_mode"),
    ("burst", "delivery.rate_limit_burst"),
    ("max_in_flight", "delivery.max_in_flight"),
    ("max_attempts", "delivery.max_attempts"),
    ("max_retry_elapsed_ms", "delivery.max_retry_elapsed_ms"),
    ("backoff_initial_ms", "delivery.backoff_initial_ms"),
    ("backoff_max_ms", "delivery.backoff_max_ms"),
];

/// The full key of `name` (a short name or a full key), or why it cannot change in place.
pub fn full_key(name: &str) -> Result<&'static str, ConfigError> {
    TUNABLE
        .iter()
        .find(|(short, full)| *short == name || *full == name)
        .map(|(_, full)| *full)
        .ok_or_else(|| {
            let names: Vec<&str> = TUNABLE.iter().map(|(short, _)| *short).collect();
            ConfigError::one(
                name,
                format!(
                    "cannot change while paysync runs (these can: {}); change the configuration and restart instead",
                    names.join(", ")
                ),
            )
        })
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::one(key, format!("{value:?} is not a whole number")))
}

fn apply(delivery: &mut DeliverySettings, key: &str, value: &str) -> Result<(), ConfigError> {
    let millis = |value: &str| number::<u64>(key, value).map(Duration::from_millis);
    match key {
        "delivery.rate_limit_per_sec" => delivery.rate_limit_per_sec = number(key, value)?,
        "delivery.rate_limit_min_per_sec" => {
            delivery.rate_limit_min_per_sec = Some(number(key, value)?)
        }
        "delivery.rate_limit_mode" => {
            delivery.rate_limit_mode = match value.trim() {
                "fixed" => RateLimitMode::Fixed,
                "adaptive" => RateLimitMode::Adaptive,
                other => {
                    return Err(ConfigError::one(
                        key,
                        format!("{other:?} is neither \"fixed\" nor \"adaptive\""),
                    ));
                }
            }
        }
        "delivery.rate_limit_burst" => delivery.rate_limit_burst = Some(number(key, value)?),
        "delivery.max_in_flight" => delivery.max_in_flight = number(key, value)?,
        "delivery.max_attempts" => delivery.max_attempts = number(key, value)?,
        "delivery.max_retry_elapsed_ms" => delivery.max_retry_elapsed_ms = millis(value)?,
        "delivery.backoff_initial_ms" => delivery.backoff_initial_ms = millis(value)?,
        "delivery.backoff_max_ms" => delivery.backoff_max_ms = millis(value)?,
        other => return full_key(other).map(|_| ()),
    }
    Ok(())
}

/// `settings` with `values` applied over them and checked as a whole.
pub fn tuned(
    settings: &Settings,
    values: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let mut tuned = settings.clone();
    for (key, value) in values {
        apply(&mut tuned.delivery, key, value)?;
    }
    tuned.validate()?;
    Ok(tuned)
}

/// `KEY=VALUE` as the operator typed it, with the key made full.
pub fn assignment(text: &str) -> Result<(&'static str, String), ConfigError> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::one(text, "is not KEY=VALUE"))?;
    Ok((full_key(name.trim())?, value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default settings with the credentials they require.
    fn base() -> Settings {
        let mut settings = Settings::default();
        settings.top.app_key = "12345678".into();
        settings.top.app_secret = Some(secrecy::SecretString::from("secret"));
        settings
    }

    #[test]
    fn short_and_full_names_apply_and_are_checked_as_a_whole() {
        let base = base();
        let (key, value) = assignment("rate=150").unwrap();
        assert_eq!(key, "delivery.rate_limit_per_sec");
        let values = BTreeMap::from([
            (key.to_owned(), value),
            ("delivery.max_in_flight".to_owned(), "8".to_owned()),
            ("delivery.rate_limit_mode".to_owned(), "adaptive".to_owned()),
        ]);
        let tuned = tuned(&base, &values).unwrap();
        assert_eq!(tuned.delivery.rate_limit_per_sec, 150);
        assert_eq!(tuned.delivery.max_in_flight, 8);
        assert_eq!(tuned.delivery.rate_limit_mode, RateLimitMode::Adaptive);
        // The rest of the configuration is untouched.
        assert_eq!(tuned.kafka.group_id, base.kafka.group_id);
    }

    #[test]
    fn a_change_is_refused_by_the_same_rules_as_check_config() {
        let base = base();
        let refused = tuned(
            &base,
            &BTreeMap::from([
                ("delivery.rate_limit_per_sec".into(), "10".into()),
                ("delivery.rate_limit_min_per_sec".into(), "20".into()),
            ]),
        )
        .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("delivery.rate_limit_min_per_sec"),
            "{refused}"
        );
        let zero = tuned(
            &base,
            &BTreeMap::from([("delivery.max_in_flight".into(), "0".into())]),
        )
        .unwrap_err();
        assert!(
            zero.to_string().contains("delivery.max_in_flight"),
            "{zero}"
        );
        let word = assignment("rate=fast")
            .and_then(|(k, v)| tuned(&base, &BTreeMap::from([(k.to_owned(), v)])))
            .unwrap_err();
        assert!(word.to_string().contains("not a whole number"), "{word}");
    }

    #[test]
    fn a_setting_that_needs_a_restart_is_named_and_refused() {
        let error = assignment("kafka.group_id=other").unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("kafka.group_id") && text.contains("restart"),
            "{text}"
        );
        assert!(assignment("rate").is_err(), "no value");
    }
}
