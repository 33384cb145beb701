//! Loading: the TOML file, then `PAYSYNC_<SECTION>__<KEY>` variables over it,
//! then [`Settings::validate`].

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};

use super::{ConfigError, ConfigProblem, Settings};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PAYSYNC_";
/// Separator between key levels in those variables.
pub const ENV_SEPARATOR: &str = "__";

impl Settings {
    /// Parses the file (optional) and the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::one(
                    "(file)",
                    format!("{} does not exist or is not a file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::globals(env_overrides(env)));
        // Lossy: environment values are strings, and "5000" must fill a number.
        let settings: Settings = figment.extract_lossy().map_err(|error| ConfigError {
            problems: error
                .into_iter()
                .map(|e| ConfigProblem {
                    key: if e.path.is_empty() {
                        "(file)".to_owned()
                    } else {
                        e.path.join(".")
                    },
                    reason: e.kind.to_string(),
                })
                .collect(),
        })?;
        settings.validate()?;
        Ok(settings)
    }
}

/// Settings that are lists; from the environment they are comma-separated.
const LIST_KEYS: [&str; 1] = ["kafka.topics"];

/// Settings from the environment: `PAYSYNC_TOP__APP_KEY=x` → `{top: {app_key: "x"}}`, values kept as strings.
fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Dict {
    let mut root = Dict::new();
    for (name, value) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        // Every setting lives in a section, so an override has at least one
        // separator; other PAYSYNC_ variables (PAYSYNC_APP_SECRET for `sign`,
        // the test scripts' PAYSYNC_KAFKA_PORT, ...) are not configuration.
        if keys.len() < 2 || keys.iter().any(String::is_empty) {
            continue;
        }
        let value = if LIST_KEYS.contains(&keys.join(".").as_str()) {
            Value::from(
                value
                    .split(',')
                    .map(|item| item.trim().to_owned())
                    .collect::<Vec<String>>(),
            )
        } else {
            Value::from(value)
        };
        insert_path(&mut root, &keys, value);
    }
    root
}

fn insert_path(dict: &mut Dict, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}
