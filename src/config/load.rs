//! Loading: the TOML file, then `PAYSYNC_<SECTION>__<KEY>` variables over it,
//! then [`Settings::validate`], with every problem in one report.
//!
//! Each section is read on its own, so a wrong type or an unknown key in one
//! section does not hide the problems of the others; in a section that does
//! not read, each key is tried alone, so every bad key is named. The
//! sections that did read are then validated. A section that did not read
//! is left out of validation (its values would be defaults, and judging
//! them would report problems the file does not have).

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use super::{
    AdminSettings, ClassificationSettings, ConfigError, ConfigProblem, ConsoleSettings,
    ControlSettings, DeliverySettings, Environment, EventSettings, FairnessSettings, KafkaSettings,
    LedgerSettings, LogSettings, ReconcileSettings, Settings, TopSettings, TracingSettings,
};

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
        let env: Vec<(String, String)> = env.into_iter().collect();
        let environment = Environment::of(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
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
        // A file that is not TOML at all has no sections to read.
        let root: Dict = figment.extract().map_err(|error| ConfigError {
            problems: problems_of(error, "(file)"),
        })?;
        let mut read = Sections::new(root);
        let mut settings = Settings {
            kafka: read.section::<KafkaSettings>("kafka"),
            delivery: read.section::<DeliverySettings>("delivery"),
            top: read.section::<TopSettings>("top"),
            event: read.section::<EventSettings>("event"),
            admin: read.section::<AdminSettings>("admin"),
            classification: read.section::<ClassificationSettings>("classification"),
            log: read.section::<LogSettings>("log"),
            tracing: read.section::<TracingSettings>("tracing"),
            ledger: read.section::<LedgerSettings>("ledger"),
            reconcile: read.section::<ReconcileSettings>("reconcile"),
            control: read.section::<ControlSettings>("control"),
            fairness: read.section::<FairnessSettings>("fairness"),
            console: read.section::<ConsoleSettings>("console"),
            environment: Environment::default(),
        };
        settings.tracing.environment = environment.clone();
        settings.environment = environment;
        let mut problems = read.unknown_sections();
        problems.append(&mut read.problems);
        if let Err(invalid) = settings.validate() {
            problems.extend(
                invalid
                    .problems
                    .into_iter()
                    .filter(|problem| !read.about_unread(problem)),
            );
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl TracingSettings {
    /// `[tracing]` from `PAYSYNC_TRACING__*` variables alone, for the tools
    /// that run without a configuration file (`paysync demo`).
    pub fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TracingSettings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let environment = Environment::of(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut read = Sections::new(env_overrides(env));
        let mut tracing = read.section::<TracingSettings>("tracing");
        tracing.environment = environment;
        let mut problems = read.problems;
        let settings = Settings {
            tracing,
            ..Settings::default()
        };
        if let Err(invalid) = settings.validate() {
            problems.extend(
                invalid
                    .problems
                    .into_iter()
                    .filter(|problem| problem.key.starts_with("tracing.")),
            );
        }
        if problems.is_empty() {
            Ok(settings.tracing)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The sections of `Settings`, in the order problems are reported.
const SECTIONS: [&str; 13] = [
    "kafka",
    "delivery",
    "top",
    "event",
    "admin",
    "classification",
    "log",
    "tracing",
    "ledger",
    "reconcile",
    "control",
    "fairness",
    "console",
];

/// Reads sections one by one, collecting what does not read.
struct Sections {
    root: Dict,
    problems: Vec<ConfigProblem>,
    /// Keys (`section.key`) and whole sections that did not read: validation
    /// saw defaults there, so its problems about them are left out.
    unread: Vec<String>,
}

impl Sections {
    fn new(root: Dict) -> Sections {
        Sections {
            root,
            problems: Vec::new(),
            unread: Vec::new(),
        }
    }

    /// The section `name`. When it does not read, each key is tried alone:
    /// the bad ones become problems and the section is read from the good
    /// ones (or is its defaults, when even those do not read together).
    fn section<T: DeserializeOwned + Default>(&mut self, name: &'static str) -> T {
        let Some(value) = self.root.get(name).cloned() else {
            return T::default();
        };
        let error = match read::<T>(value.clone()) {
            Ok(section) => return section,
            Err(error) => error,
        };
        let Value::Dict(_, keys) = value else {
            // Not a table: nothing to try key by key.
            self.problems.extend(problems_of(*error, name));
            self.unread.push(name.to_owned());
            return T::default();
        };
        let mut good = Dict::new();
        for (key, value) in keys {
            let mut alone = Dict::new();
            alone.insert(key.clone(), value.clone());
            match read::<T>(Value::from(alone)) {
                Ok(_) => {
                    good.insert(key, value);
                }
                Err(error) => {
                    let dotted = format!("{name}.{key}");
                    self.problems
                        .extend(problems_of(*error, &dotted).into_iter().map(|problem| {
                            ConfigProblem {
                                key: qualified(name, &key, &problem.key),
                                reason: problem.reason,
                            }
                        }));
                    self.unread.push(dotted);
                }
            }
        }
        match read::<T>(Value::from(good)) {
            Ok(section) => section,
            Err(together) => {
                // Keys that read alone but not together.
                self.problems.extend(problems_of(*together, name));
                self.unread.push(name.to_owned());
                T::default()
            }
        }
    }

    /// Whether validation's `problem` is about a value that did not read
    /// (validation saw its default instead).
    fn about_unread(&self, problem: &ConfigProblem) -> bool {
        self.unread
            .iter()
            .any(|unread| problem.key == *unread || problem.key.starts_with(&format!("{unread}.")))
    }

    /// Top-level keys that are not sections.
    fn unknown_sections(&self) -> Vec<ConfigProblem> {
        self.root
            .keys()
            .filter(|key| !SECTIONS.contains(&key.as_str()))
            .map(|key| ConfigProblem {
                key: key.clone(),
                reason: format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            })
            .collect()
    }
}

/// Reads one section's value. Lossy: environment values are strings, and
/// "5000" must fill a number.
fn read<T: DeserializeOwned>(value: Value) -> Result<T, Box<figment::Error>> {
    Figment::from(Serialized::globals(value))
        .extract_lossy()
        .map_err(Box::new)
}

/// A figment error as problems; `key` names them when the error has no path.
fn problems_of(error: figment::Error, key: &str) -> Vec<ConfigProblem> {
    error
        .into_iter()
        .map(|e| ConfigProblem {
            key: if e.path.is_empty() {
                key.to_owned()
            } else {
                e.path.join(".")
            },
            reason: e.kind.to_string(),
        })
        .collect()
}

/// The dotted key of a problem found reading `section.key` alone: the
/// error's own path (inside the key) when it has one.
fn qualified(section: &str, key: &str, found: &str) -> String {
    if found.starts_with(&format!("{key}.")) || found == key {
        format!("{section}.{found}")
    } else {
        format!("{section}.{key}")
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
