//! The module layering docs/ARCHITECTURE.md describes, checked on the source:
//! a module may use only modules on a lower layer, so no import cycle can
//! form between top-level modules. Tests inside a file (`#[cfg(test)]` and
//! below) are not counted: they may build whatever they test with.

use std::collections::BTreeSet;
use std::path::Path;

/// Lowest layer first. A module on layer n may use modules on layers < n.
const LAYERS: &[&[&str]] = &[
    &[
        "config",
        "protocol",
        "events",
        "runtime",
        "measure",
        "sessions",
        "local_cluster",
    ],
    &["error", "auth", "tls", "http_client"],
    &["server", "notify"],
    &["cluster"],
    &["pool", "auth_query"],
    &["context"],
    &["client"],
    &["admin", "metrics", "background", "cancel_request"],
    &["connection", "http"],
    &["listener", "demo", "drill"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(module) = top_module(rel) else {
            continue;
        };
        seen.insert(module.clone());
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is on no layer",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_uses(&code_only(&text)) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!(
                    "{}: `{module}` uses `{used}`, not below it",
                    rel.display()
                )),
                None => wrong.push(format!("{}: uses `{used}`, on no layer", rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The table names no module that is gone.
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            seen.contains(*name),
            "layer table names `{name}`, which src/ has not"
        );
    }
}

#[test]
fn the_scanner_finds_what_a_file_uses() {
    let text = "use crate::config::Config;\nuse crate::{pool::Pool, events};\n\
                // crate::admin in a comment\nfn f() { crate::tls::x(); }\n\
                #[cfg(test)]\nmod tests { use crate::listener; }\n";
    let used: Vec<String> = crate_uses(&code_only(text)).into_iter().collect();
    assert_eq!(used, ["config", "events", "pool", "tls"]);
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `client/relay.rs` → `client`, `context.rs` → `context`; the crate roots → none.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The file without comments and without its tests.
fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named by `crate::name` paths, grouped `crate::{a, b}` included.
fn crate_uses(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        used.insert(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used.remove("");
    used
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}
