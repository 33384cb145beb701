//! The invariants of `ARCHITECTURE.md`, checked on the source text: which
//! modules may import which, where librdkafka is configured, and how large a
//! file may grow.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its code before `#[cfg(test)]`.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
                out.push((path, code));
            }
        }
    }
    out.sort();
    out
}

fn source(relative: &str) -> String {
    let path = src().join(relative);
    sources(path.parent().unwrap())
        .into_iter()
        .find(|(p, _)| *p == path)
        .unwrap_or_else(|| panic!("{relative} exists"))
        .1
}

/// The crate modules a file's code names (`crate::x::…` → `x`), comments aside.
fn crate_modules(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut modules: Vec<String> = code
        .match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

#[test]
fn the_protocol_knows_no_kafka() {
    for (path, code) in sources(&src().join("top")) {
        for word in [
            "rdkafka",
            "crate::kafka",
            "crate::pipeline",
            "crate::dead_letter",
        ] {
            assert!(!code.contains(word), "{} names {word}", path.display());
        }
    }
}

#[test]
fn leaves_import_nothing_and_the_domain_only_the_clock() {
    for leaf in ["labels.rs", "gmt8.rs", "backoff.rs", "shutdown.rs"] {
        assert_eq!(crate_modules(&source(leaf)), Vec::<String>::new(), "{leaf}");
    }
    for (path, code) in sources(&src().join("event")) {
        let modules = crate_modules(&code);
        assert!(
            modules.iter().all(|m| m == "gmt8"),
            "{} imports {modules:?}",
            path.display()
        );
    }
    assert_eq!(crate_modules(&source("event/mod.rs")), ["gmt8"]);
}

#[test]
fn metrics_know_no_engine() {
    assert_eq!(crate_modules(&source("metrics.rs")), ["labels", "top"]);
}

#[test]
fn librdkafka_is_configured_only_in_the_kafka_module_and_the_dev_tools() {
    for (path, code) in sources(&src()) {
        let allowed = path.ends_with("kafka.rs") || path.starts_with(src().join("tools"));
        if !allowed {
            assert!(
                !code.contains("ClientConfig::new"),
                "{} builds its own librdkafka client configuration",
                path.display()
            );
        }
    }
}

#[test]
fn only_a_finished_task_marks_its_offset_finished() {
    for (path, code) in sources(&src()) {
        if code.contains("tracker.finish(") {
            assert!(
                path.ends_with("pipeline/partitions.rs"),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn no_source_file_grows_past_500_lines_before_its_tests() {
    for (path, code) in sources(&src()) {
        let lines = code.lines().count();
        assert!(lines <= 500, "{} has {lines} lines", path.display());
    }
}

#[test]
fn every_source_file_opens_with_a_paragraph_saying_what_it_owns() {
    for (path, code) in sources(&src()) {
        assert!(code.starts_with("//! "), "{}", path.display());
    }
}
