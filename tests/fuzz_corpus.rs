//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the cargo-fuzz targets run, so every input a fuzzer found
//! stays a regression test under plain `cargo test`, without a fuzzer.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "{target}: the corpus is empty");
}

#[test]
fn frames_corpus() {
    replay("frames", checks::frames);
}

#[test]
fn startup_corpus() {
    replay("startup", checks::startup);
}

#[test]
fn scram_corpus() {
    replay("scram", checks::scram);
}

#[test]
fn admin_corpus() {
    replay("admin", checks::admin);
}

#[test]
fn hardware_corpus() {
    replay("hardware", checks::hardware);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}
