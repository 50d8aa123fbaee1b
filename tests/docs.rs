//! The README promises a list of every metric and admin command: keep it true.

#[test]
fn readme_lists_every_metric_with_its_meaning() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (name, _, help) in switchyard::metrics::METRICS {
        let line = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README has no row for {name}"));
        assert!(
            line.contains(help),
            "README's meaning of {name} differs from src/metrics: {line}"
        );
    }
}

#[test]
fn readme_lists_the_admin_commands() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for cmd in [
        "POOLS",
        "STATS_TOTALS",
        "STATS_AVERAGES",
        "SERVERS",
        "CLIENTS",
        "DATABASES",
        "CONFIG",
        "LISTS",
        "USERS",
        "VERSION",
        "HELP",
        "SHOW NODES",
        "SHOW EVENTS",
        "PAUSE [db]",
        "RESUME [db]",
        "RECONNECT [db]",
        "KILL db",
        "RELOAD",
        "SHUTDOWN",
        "READMIT node",
    ] {
        assert!(readme.contains(cmd), "README does not mention {cmd}");
    }
}
