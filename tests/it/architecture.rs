//! The invariants of `ARCHITECTURE.md`, checked on the source text: the
//! floors (which modules may import which, and no circle between files),
//! where librdkafka is configured, and how large a file may grow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` that production code is built from, with its
/// code less its test modules: a `#[cfg(test)] mod x { … }` block is cut out,
/// and a file declared by `#[cfg(test)] mod x;` is a test module as a whole
/// and left out. Any other `#[cfg(test)]` item stays and is checked like the
/// rest: a test-only method inside a production `impl` is production text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    let mut test_files = BTreeSet::new();
    let mut out: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|(path, text)| {
            let (code, test_children) = without_test_modules(&text);
            let folder = match path.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs" | "lib.rs" | "main.rs") => path.parent().unwrap().to_path_buf(),
                _ => path.with_extension(""),
            };
            for child in test_children {
                test_files.insert(folder.join(format!("{child}.rs")));
                test_files.insert(folder.join(&child).join("mod.rs"));
            }
            (path, code)
        })
        .collect();
    out.retain(|(path, _)| !test_files.contains(path));
    out.sort();
    out
}

/// A file's text less its `#[cfg(test)]` modules, and the names of the test
/// modules it declares as files.
fn without_test_modules(text: &str) -> (String, Vec<String>) {
    let mut code = String::with_capacity(text.len());
    let mut test_children = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        // The item the attribute is on: past blank lines, comments and other attributes.
        let mut item = after;
        loop {
            let trimmed = item.trim_start();
            if trimmed.starts_with("//") || trimmed.starts_with("#[") {
                item = trimmed.split_once('\n').map_or("", |(_, next)| next);
            } else {
                item = trimmed;
                break;
            }
        }
        let declaration = item
            .strip_prefix("pub(crate) ")
            .or_else(|| item.strip_prefix("pub(super) "))
            .or_else(|| item.strip_prefix("pub "))
            .unwrap_or(item)
            .strip_prefix("mod ");
        let Some(declaration) = declaration else {
            code.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        };
        code.push_str(&rest[..at]);
        let name: String = declaration
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let opens = declaration[name.len()..].trim_start();
        let item_start = text.len() - item.len();
        if opens.starts_with(';') {
            test_children.push(name);
            rest = &text[item_start..];
            rest = rest.split_once(';').map_or("", |(_, next)| next);
        } else {
            let open = item_start + item.find('{').expect("a module block opens");
            let mut depth = 0;
            let mut end = text.len();
            for (offset, c) in text[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + offset + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &text[end..];
        }
    }
    code.push_str(rest);
    (code, test_children)
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
    for leaf in [
        "labels.rs",
        "gmt8.rs",
        "backoff.rs",
        "shutdown.rs",
        "partition.rs",
    ] {
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
    let metrics: String = sources(&src().join("metrics"))
        .into_iter()
        .map(|(_, code)| code)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(crate_modules(&metrics), ["labels", "partition", "top"]);
}

#[test]
fn librdkafka_is_configured_only_in_the_kafka_module_and_the_dev_tools() {
    for (path, code) in sources(&src()) {
        let allowed = path.ends_with("kafka/clients.rs") || path.starts_with(src().join("tools"));
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
                path.ends_with("pipeline/ownership.rs"),
                "{}",
                path.display()
            );
        }
    }
}

/// Past 500 lines a file is worth a second look (does it hold two
/// concepts?); past 800 it holds more than one concept for sure.
#[test]
fn no_source_file_grows_past_800_lines_less_its_tests() {
    for (path, code) in sources(&src()) {
        let lines = code.lines().count();
        if lines > 500 {
            eprintln!("{} has {lines} lines: one concept?", path.display());
        }
        assert!(lines <= 800, "{} has {lines} lines", path.display());
    }
}

/// One watcher tells about an event: the engine reaches the trace module
/// only through `pipeline/watch.rs` (and `build.rs`, which starts it), and
/// the trace module keeps no process-global state.
#[test]
fn the_engine_traces_through_its_watcher_and_trace_has_no_globals() {
    for (path, code) in sources(&src().join("pipeline")) {
        let allowed = path.ends_with("pipeline/watch.rs") || path.ends_with("pipeline/build.rs");
        if !allowed {
            assert!(
                !crate_modules(&code).contains(&"trace".to_owned()),
                "{} names crate::trace",
                path.display()
            );
        }
    }
    for (path, code) in sources(&src().join("trace")) {
        for line in code.lines().map(str::trim_start) {
            let global = ["static ", "pub static ", "pub(crate) static "]
                .iter()
                .any(|start| line.starts_with(start))
                || ["OnceLock", "LazyLock", "thread_local!"]
                    .iter()
                    .any(|name| line.contains(name));
            assert!(
                !global,
                "{} holds process-global state: {line}",
                path.display()
            );
        }
    }
}

/// Test-only methods live in the test modules (an `impl` block there), not
/// beside production code: what the floors check is what ships.
#[test]
fn test_only_code_lives_in_test_modules() {
    for (path, code) in sources(&src()) {
        assert!(
            !code.contains("#[cfg(test)]"),
            "{} has a #[cfg(test)] item outside its test modules",
            path.display()
        );
    }
    let (code, children) = without_test_modules(
        "use a;\n#[cfg(test)]\nmod simulation;\nfn b() {}\n#[cfg(test)]\n// why\n#[allow(x)]\nmod tests {\n    fn c() { if x { y } }\n}\n",
    );
    assert_eq!(code, "use a;\n\nfn b() {}\n\n");
    assert_eq!(children, ["simulation"]);
}

#[test]
fn every_source_file_opens_with_a_paragraph_saying_what_it_owns() {
    for (path, code) in sources(&src()) {
        assert!(code.starts_with("//! "), "{}", path.display());
    }
}

/// The floors of `ARCHITECTURE.md`'s code map, bottom up: a room (a
/// top-level module, or one of the leaf files named here) imports only rooms
/// on lower floors. Every room of the tree must be placed here.
const FLOORS: &[&[&str]] = &[
    &[
        "labels",
        "gmt8",
        "backoff",
        "shutdown",
        "partition",
        "commit_metadata",
    ],
    &["event"],
    &["top", "ledger/entry"],
    &["config", "metrics"],
    &["kafka", "trace"],
    &["control"],
    &["ledger"],
    &["dead_letter", "telemetry"],
    &["pipeline"],
    &["admin", "replay"],
    &["status"],
    &["console"],
    &["tools"],
    &["cli"],
];

/// The room a file belongs to: its top-level module, or a leaf named in [`FLOORS`].
fn room(file: &str) -> String {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    if FLOORS.iter().flat_map(|f| f.iter()).any(|r| *r == stem) {
        return stem.to_owned();
    }
    stem.split('/').next().unwrap_or(stem).to_owned()
}

/// A file's module path: `a/b.rs` → `a::b`, `a/mod.rs` → `a`, `lib.rs` → the crate.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .strip_suffix(".rs")
        .unwrap_or(file)
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The modules a file declares (`mod x;`), whose names its paths may start with.
fn declared_children(code: &str) -> BTreeSet<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub(super) "))
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(expand_use)
        .map(|path| match path.as_str() {
            "self" => prefix.trim_end_matches("::").to_owned(),
            _ => format!("{prefix}{path}"),
        })
        .collect()
}

/// The crate paths a file's code names: `use` trees expanded, and every
/// `crate::…`, `super::…`, `self::…` or `<declared child>::…` path elsewhere.
/// A folder's `pub use child::…` of its own children is how the folder shows
/// them, not a dependency, and is left out.
fn named_paths(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let mut rest = String::with_capacity(code.len());
    let mut remaining = code.as_str();
    // `use` statements first; what is left is scanned for paths.
    while let Some(at) = find_use(remaining) {
        rest.push_str(&remaining[..at.start]);
        let end = remaining[at.tree..]
            .find(';')
            .map_or(remaining.len(), |e| at.tree + e);
        let tree = &remaining[at.tree..end];
        let shows_child = at.public
            && children
                .iter()
                .any(|child| tree.trim_start().starts_with(&format!("{child}::")));
        if !shows_child {
            paths.extend(expand_use(tree));
        }
        remaining = &remaining[(end + 1).min(remaining.len())..];
    }
    rest.push_str(remaining);
    let bytes = rest.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while at < bytes.len() {
        if is_ident(bytes[at]) && (at == 0 || !(is_ident(bytes[at - 1]) || bytes[at - 1] == b':')) {
            let mut end = at;
            while end < bytes.len() && (is_ident(bytes[end]) || bytes[end] == b':') {
                end += 1;
            }
            let path = rest[at..end].trim_end_matches(':');
            let first = path.split("::").next().unwrap_or("");
            if path.contains("::")
                && (matches!(first, "crate" | "super" | "self") || children.contains(first))
            {
                paths.push(path.to_owned());
            }
            at = end;
        } else {
            at += 1;
        }
    }
    paths
}

struct UseAt {
    start: usize,
    tree: usize,
    public: bool,
}

/// The next `use` statement: where it starts, where its tree starts, and
/// whether it is a re-export.
fn find_use(code: &str) -> Option<UseAt> {
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        for (prefix, public) in [
            ("use ", false),
            ("pub use ", true),
            ("pub(crate) use ", true),
            ("pub(super) use ", true),
        ] {
            if trimmed.starts_with(prefix) {
                let start = offset + indent;
                return Some(UseAt {
                    start,
                    tree: start + prefix.len(),
                    public,
                });
            }
        }
        offset += line.len();
    }
    None
}

/// Every source file (relative to `src/`, `/`-separated) and the files it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(String, String)> = sources(&src())
        .into_iter()
        .map(|(path, code)| {
            let relative = path
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (relative, code)
        })
        .collect();
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(file, _)| (module_of(file), file.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (file, code) in &files {
        let me = module_of(file);
        let children = declared_children(code);
        let mut imports = BTreeSet::new();
        for path in named_paths(code, &children) {
            let mut segments: Vec<&str> = path.split("::").collect();
            let mut base: Vec<String> = match segments[0] {
                "crate" => Vec::new(),
                "self" => me.clone(),
                "super" => me[..me.len().saturating_sub(1)].to_vec(),
                _ => me.clone(),
            };
            if matches!(segments[0], "crate" | "self" | "super") {
                segments.remove(0);
            }
            while segments.first() == Some(&"super") {
                base.pop();
                segments.remove(0);
            }
            base.extend(segments.iter().map(|s| s.to_string()));
            // The longest prefix that is a module is the file named.
            let target = (0..=base.len()).rev().find_map(|n| modules.get(&base[..n]));
            if let Some(target) = target
                && target != file
            {
                imports.insert(target.clone());
            }
        }
        graph.insert(file.clone(), imports);
    }
    graph
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = import_graph();
    assert!(graph.len() > 50, "the graph found the crate's files");
    assert!(
        graph["pipeline/ownership.rs"].contains("pipeline/tracker.rs"),
        "the graph sees imports"
    );
    // Depth-first search for a back edge; the circle found is printed whole.
    fn visit<'a>(
        file: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|f| *f == file) {
            let mut circle: Vec<String> = path[at..].iter().map(|f| f.to_string()).collect();
            circle.push(file.to_owned());
            return Some(circle);
        }
        if !done.insert(file) {
            return None;
        }
        path.push(file);
        for next in &graph[file] {
            if let Some(circle) = visit(next, graph, done, path) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for file in graph.keys() {
        if let Some(circle) = visit(file, &graph, &mut done, &mut Vec::new()) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn every_room_imports_only_rooms_on_lower_floors() {
    let floor_of = |room: &str| FLOORS.iter().position(|floor| floor.contains(&room));
    let mut upward = Vec::new();
    for (file, imports) in import_graph() {
        if matches!(file.as_str(), "lib.rs" | "main.rs") {
            continue;
        }
        let from = room(&file);
        let from_floor =
            floor_of(&from).unwrap_or_else(|| panic!("{from} ({file}) is on no floor of FLOORS"));
        for target in imports {
            let to = room(&target);
            if to == from {
                continue;
            }
            let to_floor = floor_of(&to).unwrap_or_else(|| panic!("{to} is on no floor"));
            if to_floor >= from_floor {
                upward.push(format!(
                    "{file} ({from}, floor {from_floor}) → {target} ({to}, floor {to_floor})"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

/// The engine's own floors (`src/pipeline/`, ARCHITECTURE.md's "The
/// engine, by concept"), bottom up: a file imports only files on lower
/// floors. A folder (`commit/`, `rate/`) is read file by file.
const ENGINE_FLOORS: &[&[&str]] = &[
    &[
        "tracker",
        "window",
        "ordering",
        "gate",
        "status",
        "rate/controller",
        "rate/topics",
        "commit/answer",
        "fair",
        "retry",
    ],
    &[
        "rate",
        "resume",
        "watch",
        "filing",
        "commit/point",
        "commit",
    ],
    &["deliver", "rate/tenancy"],
    &["ownership", "rate/shared"],
    &["commit/committer"],
    &["context"],
    // The main loop's type (mod.rs), how it is built and its handle: one room.
    &["pipeline"],
];

#[test]
fn the_engine_imports_only_files_on_lower_floors() {
    let engine_room = |file: &str| -> Option<String> {
        let rest = file
            .strip_prefix("pipeline/")
            .map(str::to_owned)
            .or_else(|| (file == "pipeline/mod.rs").then(|| "pipeline".to_owned()))?;
        let stem = rest.strip_suffix(".rs").unwrap_or(&rest);
        Some(match stem.strip_suffix("/mod") {
            Some(folder) => folder.to_owned(),
            None if matches!(stem, "mod" | "build" | "running") => "pipeline".to_owned(),
            None => stem.to_owned(),
        })
    };
    let floor_of = |room: &str| ENGINE_FLOORS.iter().position(|floor| floor.contains(&room));
    let mut upward = Vec::new();
    for (file, imports) in import_graph() {
        let Some(from) = engine_room(&file) else {
            continue;
        };
        let from_floor = floor_of(&from)
            .unwrap_or_else(|| panic!("{from} ({file}) is on no floor of ENGINE_FLOORS"));
        for target in imports {
            let Some(to) = engine_room(&target) else {
                continue;
            };
            let to_floor = floor_of(&to).unwrap_or_else(|| panic!("{to} is on no floor"));
            if to_floor >= from_floor && to != from {
                upward.push(format!(
                    "{file} (floor {from_floor}) → {target} (floor {to_floor})"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "engine imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_import_reader_sees_use_trees_and_plain_paths() {
    let children: BTreeSet<String> = ["child".to_owned()].into();
    let code = "use super::{a::B, c};\npub use child::X;\nuse crate::d::{self, e::{F, G}};\nfn f() { crate::h::i(); child::j(); other::k(); }\n";
    let mut paths = named_paths(code, &children);
    paths.sort();
    assert_eq!(
        paths,
        [
            "child::j",
            "crate::d",
            "crate::d::e::F",
            "crate::d::e::G",
            "crate::h::i",
            "super::a::B",
            "super::c"
        ]
    );
}
