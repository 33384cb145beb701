//! The process environment paysync reads besides its own `PAYSYNC_*`
//! overrides, taken once with them when the settings load: the standard
//! OpenTelemetry variables (where traces go) and the proxy variables (how
//! calls leave). Reading them in one place, from the same environment as
//! the rest of the settings, is what lets `check-config` show what they
//! decided and the tests give them explicitly. (The host name, a fact about
//! the host with a kernel fallback rather than a setting, is read where the
//! static identity needs it.)

use std::collections::BTreeMap;

/// The variables read (others are not kept).
const KNOWN: [&str; 15] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The known variables of one environment. Its `Debug` names the variables
/// set, never their values: headers and proxy URLs carry credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Environment(BTreeMap<&'static str, String>);

impl Environment {
    /// The known variables among `env` (blank ones count as unset).
    pub fn of<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Environment {
        Environment(
            env.into_iter()
                .filter(|(_, value)| !value.trim().is_empty())
                .filter_map(|(name, value)| {
                    let known = KNOWN.iter().find(|known| **known == name)?;
                    Some((*known, value.to_owned()))
                })
                .collect(),
        )
    }

    /// A variable's value, if it is set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The first of `names` that is set, with its name.
    pub fn first(&self, names: [&'static str; 2]) -> Option<(&'static str, &str)> {
        names
            .into_iter()
            .find_map(|name| self.get(name).map(|value| (name, value)))
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_variables_are_kept_and_debug_names_them_only() {
        let environment = Environment::of([
            ("HTTPS_PROXY", "http://user:s3cr3t@proxy:3128"),
            ("PATH", "/usr/bin"),
            ("NO_PROXY", "  "),
        ]);
        assert_eq!(
            environment.get("HTTPS_PROXY"),
            Some("http://user:s3cr3t@proxy:3128")
        );
        assert_eq!(environment.get("PATH"), None, "not kept");
        assert_eq!(environment.get("NO_PROXY"), None, "blank is unset");
        assert_eq!(format!("{environment:?}"), r#"["HTTPS_PROXY"]"#);
    }
}
