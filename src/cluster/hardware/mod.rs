//! Hardware status of a node, beside the PostgreSQL health check.
//!
//! A database can answer health checks right up to the moment its host loses
//! power. The baseboard usually says so earlier: one of two power supplies
//! gone, an inlet running hot. A node may therefore name a *hardware probe*
//! (`[cluster.nodes.hardware]`, see [`HardwareSpec`], which lives with the
//! rest of the configuration in [`crate::config::hardware`]), either
//! - `url`: an HTTP endpoint serving Prometheus text (node_exporter,
//!   ipmi_exporter, a Redfish exporter), judged by [`Rule`]s on named series; or
//! - `command`: a shell command whose exit status is the verdict (0 ok,
//!   1 degraded, 2 failing) and whose first line of stdout is the reason; or
//! - `redfish`: a BMC's Redfish service root, whose chassis (power supplies,
//!   temperatures, fans) and systems report their own health.
//!
//! Each probe yields a [`Verdict`]: [`HardwareStatus`] `ok`, `degraded`,
//! `failing` or `unknown` (the probe itself failed: unreachable, timed out,
//! unparsable), with human-readable reasons. As docs/switchover.md says, `failing`
//! counts as down and `degraded` raises an event and may start a planned
//! switchover; that policy belongs to the monitor, not to this module. A
//! reading worse than the status in force is acted on only once
//! `failing_after` readings in a row say so.
//!
//! Layout, pure parts apart from I/O:
//! - [`exposition`]: parser of the Prometheus text format (pure);
//! - [`rules`]: statuses, verdicts and [`evaluate`] (pure);
//! - [`probe`](mod@probe): [`probe()`](fn@probe), which runs one probe (I/O,
//!   through [`crate::http_client`] for a `url`, over TLS for `https://`);
//! - [`redfish`]: what a Redfish resource links to and reports, and the
//!   mapping from its health to a status (pure); [`redfish_probe`]: following
//!   those links on the BMC, bounded (I/O);
//! - [`confirm`]: which status is in force after a probe's last readings:
//!   a worse one only after `failing_after` in a row (pure);
//! - [`pace`]: whether a hardware verdict may move the primary now, given
//!   when it last moved (`switchover.min_interval`; pure);
//! - [`watch`]: the task per probe that runs it and stores what is in force.

pub mod confirm;
pub mod exposition;
pub mod pace;
pub mod probe;
pub mod redfish;
pub mod redfish_probe;
pub mod rules;
pub mod watch;

pub use crate::config::hardware::{HardwareSpec, Op, Rule, RuleError, Severity};
pub use exposition::{ExpositionError, Sample};
pub use probe::probe;
pub use rules::{evaluate, HardwareStatus, Verdict};
