//! What the dashboard and the alert rules may query: the metric names an
//! expression uses, and the metrics paysync exports (the table of docs/monitoring.md,
//! itself checked against the registry in src/metrics/). Shared by the
//! deployment-file checks and the Helm chart checks.

use std::collections::BTreeSet;
use std::path::Path;

/// Metric names used in an expression, with histogram suffixes removed.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("paysync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metrics docs/monitoring.md's table documents.
pub fn exported(root: &Path) -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root.join("docs/monitoring.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `paysync_"))
        .map(|l| l.split('`').nth(1).unwrap().to_owned())
        .collect();
    assert!(documented.len() > 20);
    documented
}
