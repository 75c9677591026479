//! The crate's layers, checked: every top-level module uses only modules of its own
//! layer or below, and no two modules use each other through any path. The README's
//! architecture section draws the same layers.
//!
//! The uses are read from the source: every `crate::<module>` outside comments, in the
//! files of the built crate. Test-only code (a module declared under `#[cfg(test)]`,
//! and a file's trailing `#[cfg(test)] mod tests`) may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use the modules of its own layer and of the
/// layers before it.
const LAYERS: &[&[&str]] = &[
    // Values and helpers every layer shares.
    &[
        "lsn",
        "sql",
        "privacy",
        "terminal",
        "progress",
        "telemetry",
        "cli",
    ],
    // Source columns and their lake types.
    &["schema"],
    &["config"],
    // The Postgres side: connections, catalog, publications, the replication protocol.
    &["pg"],
    // Arrow batches of changes; the metrics registry.
    &["batch", "metrics"],
    // Delta tables: writing, committing, maintenance, mirrors.
    &["lake"],
    // Applying changes to tables; the initial copy.
    &["apply", "snapshot"],
    // Why a run stops, classified.
    &["error"],
    // Start-up shared by every command.
    &["bootstrap"],
    // The long-running jobs and one-shot lake commands.
    &["pipeline", "maintain", "verify", "forget"],
    // The commands and the HTTP endpoints.
    &["commands", "http"],
];

/// The `src` folder.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module of each source file of the built crate (test-only files left
/// out), with its text up to a trailing `#[cfg(test)] mod tests`.
fn sources() -> Vec<(String, String)> {
    let root = src();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let test_only = test_only_files(&files);
    files
        .into_iter()
        .filter(|path| !test_only.contains(path))
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).ok()?;
            let top = relative.components().next()?.as_os_str().to_str()?;
            let top = top.trim_end_matches(".rs").to_owned();
            if top == "lib" || top == "main" || top == "architecture" {
                return None;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let built = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            Some((top, built))
        })
        .collect()
}

/// Files of modules declared under `#[cfg(test)]` (`#[cfg(test)]\nmod name;`).
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut test_only = BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(path).expect("read source");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            let Some(name) = pair[1]
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            if pair[0] != "#[cfg(test)]" {
                continue;
            }
            let dir = match path.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs" | "lib.rs") => path.parent().map(Path::to_path_buf),
                _ => Some(path.with_extension("")),
            };
            if let Some(dir) = dir {
                test_only.insert(dir.join(format!("{name}.rs")));
                test_only.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    test_only
}

/// Module → the other top-level modules it uses.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources() {
        let used = uses.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if name != module && modules.contains(name.as_str()) {
                    used.insert(name);
                }
            }
        }
    }
    uses
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let top: BTreeSet<String> = std::fs::read_dir(src())
        .expect("read src")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .trim_end_matches(".rs")
                .to_owned();
            (path.is_dir() || path.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .filter(|name| !matches!(name.as_str(), "lib" | "main" | "architecture"))
        .collect();
    let missing: Vec<&String> = top.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in architecture::LAYERS: {missing:?}"
    );
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let mut reaching_up = Vec::new();
    for (module, used) in uses() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for other in used {
            if layer_of(&other).is_some_and(|layer| layer > own) {
                reaching_up.push(format!("{module} uses {other}"));
            }
        }
    }
    assert!(
        reaching_up.is_empty(),
        "lower layers reach up: {reaching_up:?}"
    );
}

#[test]
fn no_two_modules_use_each_other() {
    let uses = uses();
    // Depth-first search for a path back to the start, from every module.
    for start in uses.keys() {
        let mut stack: Vec<Vec<&String>> = vec![vec![start]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path[path.len() - 1];
            for next in uses.get(last).into_iter().flatten() {
                if next == start {
                    let cycle: Vec<&str> = path.iter().map(|m| m.as_str()).collect();
                    panic!("import cycle: {} -> {start}", cycle.join(" -> "));
                }
                if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
}

#[test]
fn the_checks_see_the_uses_they_judge() {
    // The reading must find known uses, so the checks above cannot pass by reading
    // nothing.
    let uses = uses();
    assert!(uses["pipeline"].contains("apply"));
    assert!(uses["apply"].contains("lake"));
    assert!(uses["pg"].contains("config"));
    assert!(
        !uses["schema"].contains("batch"),
        "only schema's tests use batch"
    );
}
