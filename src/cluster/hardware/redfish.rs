//! Reading a BMC's Redfish resources (DMTF DSP0266): what each resource
//! links to, what health its parts report, and what that comes to for the
//! node. Pure: [`super::redfish_probe`] fetches, this decides.
//!
//! From the service root the probe follows `Chassis` and `Systems` to their
//! members; from each chassis its `Power` and `Thermal` resources or, where a
//! BMC serves only the newer schemas, `PowerSubsystem` and `ThermalSubsystem`
//! with their power supply and fan collections. Every path comes from an
//! `@odata.id` the BMC served; none is built here.
//!
//! The mapping ([`judge`]): `Health` or `HealthRollup` `Critical` is
//! failing, `Warning` degraded, `OK` ok; a part whose `State` is `Absent` or
//! `Disabled` says nothing (an empty power supply bay is no failure); a
//! system whose `PowerState` is `Off` (or `PoweringOff`) is failing. Any
//! other value is `unknown`. The worst finding wins ([`verdict`]).

use serde_json::{Map, Value};

use super::rules::{HardwareStatus, Verdict, MAX_REASONS};

/// Longest link followed, in bytes: a Redfish path is a few dozen.
const MAX_LINK: usize = 1024;
/// Characters of a name or value the BMC sent that a reason quotes.
const MAX_QUOTED: usize = 64;

/// What a fetched resource is taken to be, which says what to read in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/redfish/v1`: links to `Chassis` and `Systems`.
    ServiceRoot,
    /// A collection whose `Members` are all of one kind.
    Collection(Member),
    /// A chassis: its own `Status`, and links to its power and thermal parts.
    Chassis,
    /// A computer system: its own `Status` and `PowerState`.
    System,
    /// The classic `Power` resource: `PowerSupplies[]`, embedded.
    Power,
    /// The classic `Thermal` resource: `Temperatures[]` and `Fans[]`, embedded.
    Thermal,
    /// The newer `PowerSubsystem`: its `Status`, a link to its power supplies.
    PowerSubsystem,
    /// The newer `ThermalSubsystem`: its `Status`, a link to its fans.
    ThermalSubsystem,
    /// A power supply or a fan of the newer subsystems: its own `Status`.
    Part(Member),
}

/// The kind of a collection's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Of the service root's `Chassis`.
    Chassis,
    /// Of the service root's `Systems`.
    System,
    /// Of a `PowerSubsystem`'s `PowerSupplies`.
    PowerSupply,
    /// Of a `ThermalSubsystem`'s `Fans`.
    Fan,
}

impl Member {
    fn resource(self) -> Resource {
        match self {
            Member::Chassis => Resource::Chassis,
            Member::System => Resource::System,
            Member::PowerSupply | Member::Fan => Resource::Part(self),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Member::Chassis => "chassis",
            Member::System => "system",
            Member::PowerSupply => SUPPLY,
            Member::Fan => "fan",
        }
    }
}

/// A resource to fetch: an `@odata.id` path, and what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The path on the BMC, without a fragment.
    pub path: String,
    /// What the path should serve.
    pub resource: Resource,
}

/// One status a probe found, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Never `Ok`: a part that is well is not worth a line.
    pub status: HardwareStatus,
    /// About a power supply's own health (see [`verdict`]).
    pub supply: bool,
    /// E.g. `power supply "PS1" at /redfish/v1/Chassis/1U/Power: Health = "Critical" -> failing`.
    pub reason: String,
}

/// What one resource says: findings about its parts, and links to follow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Parts that are not well.
    pub findings: Vec<Finding>,
    /// Resources it leads to.
    pub links: Vec<Link>,
    /// Power supplies present and healthy.
    pub supplies_ok: u32,
}

/// Why a resource could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedfishError {
    /// The resource, or a part of it, is not a JSON object.
    #[error("{0} is not a JSON object")]
    NotAnObject(String),
    /// A list the schema defines is something else.
    #[error("{0} is not a list")]
    NotAList(&'static str),
    /// A collection without `Members`.
    #[error("no Members: not a Redfish collection")]
    NotACollection,
    /// A service root that links neither `Chassis` nor `Systems`: the URL
    /// names something else.
    #[error("neither Chassis nor Systems: not a Redfish service root")]
    NotAServiceRoot,
    /// An `@odata.id` that is not a path on the same service.
    #[error("link {0:?} is not a path on this service")]
    BadLink(String),
}

/// Reads `doc`, fetched from `path` and taken to be `resource`.
pub fn read(resource: Resource, path: &str, doc: &Value) -> Result<Reading, RedfishError> {
    let doc = doc
        .as_object()
        .ok_or_else(|| RedfishError::NotAnObject("the resource".into()))?;
    let mut r = Reading::default();
    match resource {
        Resource::ServiceRoot => {
            r.follow(doc, "Chassis", Resource::Collection(Member::Chassis))?;
            r.follow(doc, "Systems", Resource::Collection(Member::System))?;
            if r.links.is_empty() {
                return Err(RedfishError::NotAServiceRoot);
            }
        }
        Resource::Collection(member) => {
            let members = doc.get("Members").ok_or(RedfishError::NotACollection)?;
            for m in list(members, "Members")? {
                let path = link_of(m)?.ok_or_else(|| RedfishError::BadLink(cut(&m.to_string())))?;
                r.links.push(Link {
                    path,
                    resource: member.resource(),
                });
            }
        }
        Resource::Chassis => {
            r.part("chassis", name(doc, None), path, doc, false);
            // The classic resources when served: one request each, the
            // parts embedded; the newer ones take a request per part.
            r.follow_either(
                doc,
                ("Power", Resource::Power),
                ("PowerSubsystem", Resource::PowerSubsystem),
            )?;
            r.follow_either(
                doc,
                ("Thermal", Resource::Thermal),
                ("ThermalSubsystem", Resource::ThermalSubsystem),
            )?;
        }
        Resource::System => r.part("system", name(doc, None), path, doc, true),
        Resource::Power => r.parts(doc, "PowerSupplies", "power supply", path)?,
        Resource::Thermal => {
            r.parts(doc, "Temperatures", "temperature", path)?;
            r.parts(doc, "Fans", "fan", path)?;
        }
        Resource::PowerSubsystem => {
            r.part("power subsystem", name(doc, None), path, doc, false);
            r.follow(
                doc,
                "PowerSupplies",
                Resource::Collection(Member::PowerSupply),
            )?;
        }
        Resource::ThermalSubsystem => {
            r.part("thermal subsystem", name(doc, None), path, doc, false);
            r.follow(doc, "Fans", Resource::Collection(Member::Fan))?;
        }
        Resource::Part(member) => r.part(member.noun(), name(doc, None), path, doc, false),
    }
    Ok(r)
}

impl Reading {
    /// Follows `doc[key]`'s `@odata.id`, if it has one.
    fn follow(
        &mut self,
        doc: &Map<String, Value>,
        key: &str,
        resource: Resource,
    ) -> Result<(), RedfishError> {
        if let Some(path) = doc.get(key).map(link_of).transpose()?.flatten() {
            self.links.push(Link { path, resource });
        }
        Ok(())
    }

    /// Follows the first of two keys that links somewhere.
    fn follow_either(
        &mut self,
        doc: &Map<String, Value>,
        first: (&str, Resource),
        second: (&str, Resource),
    ) -> Result<(), RedfishError> {
        let before = self.links.len();
        self.follow(doc, first.0, first.1)?;
        if self.links.len() == before {
            self.follow(doc, second.0, second.1)?;
        }
        Ok(())
    }

    /// Judges every entry of the embedded list `doc[key]`.
    fn parts(
        &mut self,
        doc: &Map<String, Value>,
        key: &'static str,
        noun: &str,
        path: &str,
    ) -> Result<(), RedfishError> {
        let Some(entries) = doc.get(key) else {
            return Ok(());
        };
        for (i, entry) in list(entries, key)?.iter().enumerate() {
            let entry = entry
                .as_object()
                .ok_or_else(|| RedfishError::NotAnObject(format!("{key}[{i}]")))?;
            let fallback = format!("{key}[{i}]");
            self.part(noun, name(entry, Some(&fallback)), path, entry, false);
        }
        Ok(())
    }

    /// Judges one part's `Status` (and `PowerState`, for a system).
    fn part(&mut self, noun: &str, name: String, at: &str, obj: &Map<String, Value>, power: bool) {
        let status = obj.get("Status").and_then(Value::as_object);
        let field = |key: &str| status.and_then(|s| s.get(key)).and_then(Value::as_str);
        let fields = Fields {
            state: field("State"),
            health: field("Health"),
            health_rollup: field("HealthRollup"),
            power_state: power
                .then(|| obj.get("PowerState").and_then(Value::as_str))
                .flatten(),
        };
        let supply = noun == SUPPLY;
        match judge(&fields) {
            Some((status, why)) => self.findings.push(Finding {
                status,
                supply,
                reason: format!("{noun} {name:?} at {at}: {why} -> {status}"),
            }),
            None if supply && fields.health == Some("OK") && fields.present() => {
                self.supplies_ok += 1;
            }
            None => {}
        }
    }
}

/// `value` as a list, or why not.
fn list<'a>(value: &'a Value, key: &'static str) -> Result<&'a Vec<Value>, RedfishError> {
    value.as_array().ok_or(RedfishError::NotAList(key))
}

/// The `@odata.id` path of a link object (`None` when it has none), checked
/// to be a path on the same service: a BMC's answer chooses what is fetched
/// next, so it must not choose another host or break the request line.
fn link_of(value: &Value) -> Result<Option<String>, RedfishError> {
    let Some(id) = value.as_object().and_then(|o| o.get("@odata.id")) else {
        return Ok(None);
    };
    let bad = || RedfishError::BadLink(cut(&id.to_string()));
    let raw = id.as_str().ok_or_else(bad)?;
    let path = raw.split('#').next().unwrap_or_default();
    let fits = path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= MAX_LINK
        && !path.chars().any(|c| c.is_whitespace() || c.is_control());
    if !fits {
        return Err(bad());
    }
    Ok(Some(path.to_owned()))
}

/// A part's name for reasons: `Name`, else `MemberId`, else `fallback`, else
/// `?`; cut short, since the BMC chose it.
fn name(obj: &Map<String, Value>, fallback: Option<&str>) -> String {
    let named = ["Name", "MemberId"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str));
    cut(named.or(fallback).unwrap_or("?"))
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// The fields of one part that [`judge`] reads; `None` when absent or null.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// `Status.State`: `Enabled`, `Absent`, `Disabled`, ...
    pub state: Option<&'a str>,
    /// `Status.Health`: the part itself.
    pub health: Option<&'a str>,
    /// `Status.HealthRollup`: the part and what it contains.
    pub health_rollup: Option<&'a str>,
    /// A system's `PowerState`.
    pub power_state: Option<&'a str>,
}

/// What one part's fields come to: the worst status they say other than ok,
/// with the field that says it (the first of equals); `None` when all is
/// well or nothing is said.
pub fn judge(f: &Fields<'_>) -> Option<(HardwareStatus, String)> {
    let present = f.present();
    let said = [
        (
            "Health",
            f.health.filter(|_| present),
            health as fn(&str) -> _,
        ),
        // What a part contains is judged where it is read: its rollup
        // going critical (one supply of two gone) is a degraded host.
        ("HealthRollup", f.health_rollup.filter(|_| present), rollup),
        // Power gone is power gone, whatever the system's State says.
        ("PowerState", f.power_state, power),
    ];
    let mut worst: Option<(HardwareStatus, String)> = None;
    for (field, value, word) in said {
        let Some(value) = value else { continue };
        let status = word(value);
        if status != HardwareStatus::Ok && worst.as_ref().is_none_or(|(w, _)| status > *w) {
            worst = Some((status, format!("{field} = {:?}", cut(value))));
        }
    }
    worst
}

impl Fields<'_> {
    /// An empty bay, or a part switched off on purpose, has no health to act on.
    fn present(&self) -> bool {
        !matches!(self.state, Some("Absent" | "Disabled"))
    }
}

/// `HealthRollup`: as [`health`], at most degraded.
fn rollup(value: &str) -> HardwareStatus {
    health(value).min(HardwareStatus::Degraded)
}

/// `Health`, as the Redfish `Resource.Health` enum.
fn health(value: &str) -> HardwareStatus {
    match value {
        "OK" => HardwareStatus::Ok,
        "Warning" => HardwareStatus::Degraded,
        "Critical" => HardwareStatus::Failing,
        _ => HardwareStatus::Unknown,
    }
}

/// A system's `PowerState`, as the Redfish `Resource.PowerState` enum.
fn power(value: &str) -> HardwareStatus {
    match value {
        "On" | "PoweringOn" | "Paused" => HardwareStatus::Ok,
        "Off" | "PoweringOff" => HardwareStatus::Failing,
        _ => HardwareStatus::Unknown,
    }
}

/// What [`Reading::part`] calls a power supply.
const SUPPLY: &str = "power supply";

/// The verdict of one probe's findings: the worst wins, reasons worst first
/// (then in the order found), at most [`MAX_REASONS`] of them.
/// `supplies_ok` power supplies were found healthy: while one is, a failed
/// supply has cost the host its redundancy, not its power, so it is degraded
/// (a planned switchover) rather than failing (a failover).
pub fn verdict(mut findings: Vec<Finding>, supplies_ok: u32) -> Verdict {
    if supplies_ok > 0 {
        for f in findings
            .iter_mut()
            .filter(|f| f.supply && f.status == HardwareStatus::Failing)
        {
            f.status = HardwareStatus::Degraded;
            f.reason.push_str(&format!(
                "; {supplies_ok} other supply OK: redundancy lost -> degraded"
            ));
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.status));
    let status = findings.first().map_or(HardwareStatus::Ok, |f| f.status);
    let more = findings.len().saturating_sub(MAX_REASONS);
    let mut reasons: Vec<String> = findings
        .into_iter()
        .take(MAX_REASONS)
        .map(|f| f.reason)
        .collect();
    if more > 0 {
        reasons.push(format!("... and {more} more"));
    }
    Verdict { status, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use HardwareStatus::{Degraded, Failing, Unknown};

    #[test]
    fn the_mapping() {
        let f = |state, health, health_rollup, power_state| Fields {
            state,
            health,
            health_rollup,
            power_state,
        };
        let cases = [
            (f(None, None, None, None), None),
            (f(Some("Enabled"), Some("OK"), Some("OK"), None), None),
            (
                f(Some("Enabled"), Some("Warning"), None, None),
                Some((Degraded, "Health = \"Warning\"")),
            ),
            (
                f(None, Some("Critical"), None, None),
                Some((Failing, "Health = \"Critical\"")),
            ),
            (
                f(None, Some("OK"), Some("Warning"), None),
                Some((Degraded, "HealthRollup = \"Warning\"")),
            ),
            (
                f(None, Some("OK"), Some("Critical"), None),
                Some((Degraded, "HealthRollup = \"Critical\"")),
            ),
            (
                f(None, Some("Critical"), Some("Critical"), None),
                Some((Failing, "Health = \"Critical\"")),
            ),
            // An empty bay or a disabled part says nothing, whatever its health.
            (
                f(Some("Absent"), Some("Critical"), Some("Critical"), None),
                None,
            ),
            (f(Some("Disabled"), Some("Warning"), None, None), None),
            (
                f(Some("StandbyOffline"), Some("Warning"), None, None),
                Some((Degraded, "Health = \"Warning\"")),
            ),
            // Power gone.
            (f(Some("Enabled"), Some("OK"), None, Some("On")), None),
            (
                f(Some("Enabled"), Some("OK"), None, Some("Off")),
                Some((Failing, "PowerState = \"Off\"")),
            ),
            (
                f(Some("Disabled"), None, None, Some("Off")),
                Some((Failing, "PowerState = \"Off\"")),
            ),
            (
                f(None, Some("Warning"), None, Some("PoweringOff")),
                Some((Failing, "PowerState = \"PoweringOff\"")),
            ),
            (f(None, None, None, Some("PoweringOn")), None),
            // Words outside the schema: the probe cannot tell.
            (
                f(None, Some("ok"), None, None),
                Some((Unknown, "Health = \"ok\"")),
            ),
            (
                f(None, Some("Degraded"), Some("Warning"), None),
                Some((Degraded, "HealthRollup = \"Warning\"")),
            ),
            (
                f(None, None, None, Some("Sleeping")),
                Some((Unknown, "PowerState = \"Sleeping\"")),
            ),
        ];
        for (fields, want) in cases {
            let got = judge(&fields);
            let want = want.map(|(s, why)| (s, why.to_string()));
            assert_eq!(got, want, "{fields:?}");
        }
    }

    fn statuses(r: &Reading) -> Vec<HardwareStatus> {
        r.findings.iter().map(|f| f.status).collect()
    }

    fn link(path: &str, resource: Resource) -> Link {
        Link {
            path: path.into(),
            resource,
        }
    }

    #[test]
    fn the_service_root_and_collections_lead_to_members() {
        let root = json!({
            "@odata.id": "/redfish/v1",
            "Chassis": { "@odata.id": "/redfish/v1/Chassis" },
            "Systems": { "@odata.id": "/redfish/v1/Systems" },
            "Managers": { "@odata.id": "/redfish/v1/Managers" },
        });
        let r = read(Resource::ServiceRoot, "/redfish/v1", &root).unwrap();
        assert_eq!(
            r.links,
            [
                link("/redfish/v1/Chassis", Resource::Collection(Member::Chassis)),
                link("/redfish/v1/Systems", Resource::Collection(Member::System)),
            ]
        );
        let systems = json!({ "Members": [
            { "@odata.id": "/redfish/v1/Systems/1" },
            { "@odata.id": "/redfish/v1/Systems/2" },
        ], "Members@odata.count": 2 });
        let r = read(
            Resource::Collection(Member::System),
            "/redfish/v1/Systems",
            &systems,
        )
        .unwrap();
        assert_eq!(
            r.links,
            [
                link("/redfish/v1/Systems/1", Resource::System),
                link("/redfish/v1/Systems/2", Resource::System),
            ]
        );
        let fans = json!({ "Members": [{ "@odata.id": "/redfish/v1/Chassis/1/ThermalSubsystem/Fans/1" }] });
        let r = read(Resource::Collection(Member::Fan), "/x", &fans).unwrap();
        assert_eq!(r.links[0].resource, Resource::Part(Member::Fan));
    }

    #[test]
    fn a_chassis_prefers_the_classic_power_and_thermal_resources() {
        let both = json!({
            "Name": "1U", "Status": { "State": "Enabled", "Health": "OK", "HealthRollup": "OK" },
            "Power": { "@odata.id": "/redfish/v1/Chassis/1U/Power" },
            "PowerSubsystem": { "@odata.id": "/redfish/v1/Chassis/1U/PowerSubsystem" },
            "ThermalSubsystem": { "@odata.id": "/redfish/v1/Chassis/1U/ThermalSubsystem" },
        });
        let r = read(Resource::Chassis, "/redfish/v1/Chassis/1U", &both).unwrap();
        assert!(r.findings.is_empty());
        assert_eq!(
            r.links,
            [
                link("/redfish/v1/Chassis/1U/Power", Resource::Power),
                link(
                    "/redfish/v1/Chassis/1U/ThermalSubsystem",
                    Resource::ThermalSubsystem
                ),
            ]
        );
        let sub = json!({
            "Status": { "Health": "OK", "HealthRollup": "Warning" },
            "PowerSupplies": { "@odata.id": "/redfish/v1/Chassis/1U/PowerSubsystem/PowerSupplies" },
        });
        let r = read(Resource::PowerSubsystem, "/p", &sub).unwrap();
        assert_eq!(statuses(&r), [Degraded]);
        assert_eq!(
            r.links[0].resource,
            Resource::Collection(Member::PowerSupply)
        );
        let psu =
            json!({ "Name": "PSU 2", "Status": { "State": "Enabled", "Health": "Critical" } });
        let r = read(Resource::Part(Member::PowerSupply), "/p/2", &psu).unwrap();
        assert_eq!(
            r.findings[0].reason,
            "power supply \"PSU 2\" at /p/2: Health = \"Critical\" -> failing"
        );
    }

    #[test]
    fn embedded_parts_are_judged_one_by_one() {
        let power = json!({ "PowerSupplies": [
            { "Name": "PS1", "Status": { "State": "Enabled", "Health": "OK" } },
            { "MemberId": "1", "Status": { "State": "Enabled", "Health": "Warning" } },
            { "Name": "Bay 3", "Status": { "State": "Absent", "Health": "Critical" } },
            { "Status": { "State": "Enabled", "Health": "Critical" } },
        ]});
        let r = read(Resource::Power, "/redfish/v1/Chassis/1U/Power", &power).unwrap();
        let reasons: Vec<&str> = r.findings.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "power supply \"1\" at /redfish/v1/Chassis/1U/Power: Health = \"Warning\" -> degraded",
                "power supply \"PowerSupplies[3]\" at /redfish/v1/Chassis/1U/Power: Health = \"Critical\" -> failing",
            ]
        );
        let thermal = json!({
            "Temperatures": [{ "Name": "CPU1 Temp", "Status": { "State": "Enabled", "Health": "Critical" } }],
            "Fans": [{ "Name": "Fan1", "Status": { "State": "Enabled", "Health": "Warning" } }, { "Name": "Fan2" }],
        });
        let r = read(Resource::Thermal, "/t", &thermal).unwrap();
        assert_eq!(statuses(&r), [Failing, Degraded]);
        let system = json!({ "Name": "web483", "PowerState": "Off", "Status": { "State": "Enabled", "Health": "OK" } });
        let r = read(Resource::System, "/redfish/v1/Systems/1", &system).unwrap();
        assert_eq!(
            r.findings[0].reason,
            "system \"web483\" at /redfish/v1/Systems/1: PowerState = \"Off\" -> failing"
        );
        // A PowerState on anything but a system is not read.
        let r = read(Resource::Chassis, "/c", &json!({ "PowerState": "Off" })).unwrap();
        assert!(r.findings.is_empty() && r.links.is_empty());
    }

    #[test]
    fn malformed_resources_and_foreign_links_are_refused() {
        let cases = [
            (
                Resource::ServiceRoot,
                json!([1, 2]),
                "the resource is not a JSON object",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Name": "a metrics page" }),
                "not a Redfish service root",
            ),
            (
                Resource::Collection(Member::Chassis),
                json!({}),
                "no Members",
            ),
            (
                Resource::Collection(Member::Chassis),
                json!({ "Members": {} }),
                "Members is not a list",
            ),
            (
                Resource::Collection(Member::Chassis),
                json!({ "Members": [{}] }),
                "link \"{}\" is not a path",
            ),
            (
                Resource::Power,
                json!({ "PowerSupplies": [7] }),
                "PowerSupplies[0] is not a JSON object",
            ),
            (
                Resource::Thermal,
                json!({ "Fans": "none" }),
                "Fans is not a list",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": "https://evil/x" } }),
                "is not a path on this service",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": "//evil/x" } }),
                "is not a path",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": "/a b" } }),
                "is not a path",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": "/a\r\nX: 1" } }),
                "is not a path",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": 5 } }),
                "link \"5\"",
            ),
            (
                Resource::ServiceRoot,
                json!({ "Chassis": { "@odata.id": format!("/{}", "a".repeat(2000)) } }),
                "is not a path",
            ),
        ];
        for (resource, doc, needle) in cases {
            let err = read(resource, "/x", &doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
        // A fragment is no part of the path fetched.
        let root = json!({ "Systems": { "@odata.id": "/redfish/v1/Systems#/x" } });
        let r = read(Resource::ServiceRoot, "/redfish/v1", &root).unwrap();
        assert_eq!(r.links[0].path, "/redfish/v1/Systems");
    }

    #[test]
    fn names_from_the_bmc_are_cut_and_escaped() {
        let psu = json!({ "Name": format!("PS1\n{}", "x".repeat(200)), "Status": { "Health": "Warning" } });
        let r = read(Resource::Part(Member::PowerSupply), "/p", &psu).unwrap();
        let reason = &r.findings[0].reason;
        assert!(reason.starts_with("power supply \"PS1\\nxxx"), "{reason}");
        assert!(!reason.contains('\n') && reason.len() < 150, "{reason}");
    }

    #[test]
    fn a_failed_supply_beside_a_healthy_one_is_lost_redundancy() {
        let power = |healths: &[&str]| {
            let supplies: Vec<_> = healths
                .iter()
                .enumerate()
                .map(|(i, h)| json!({ "Name": format!("PS{}", i + 1), "Status": { "State": "Enabled", "Health": h } }))
                .collect();
            let r = read(Resource::Power, "/p", &json!({ "PowerSupplies": supplies })).unwrap();
            verdict(r.findings, r.supplies_ok)
        };
        for (healths, want) in [
            (&["OK", "OK"][..], HardwareStatus::Ok),
            (&["Critical", "OK"], Degraded),
            (&["Warning", "OK"], Degraded),
            (&["Critical", "Critical"], Failing),
            (&["Critical"], Failing),
            (&["Critical", "Warning"], Failing),
        ] {
            assert_eq!(power(healths).status, want, "{healths:?}");
        }
        let v = power(&["Critical", "OK"]);
        assert!(
            v.reasons[0].ends_with("redundancy lost -> degraded"),
            "{v:?}"
        );
        // A failing system or fan is not a supply: never capped.
        let system = json!({ "Name": "S", "PowerState": "Off", "Status": { "Health": "OK" } });
        let r = read(Resource::System, "/s", &system).unwrap();
        assert_eq!(verdict(r.findings, 2).status, Failing);
    }

    #[test]
    fn the_worst_finding_wins() {
        let finding = |status, reason: &str| Finding {
            status,
            supply: false,
            reason: reason.into(),
        };
        assert_eq!(verdict(vec![], 0), Verdict::ok());
        let v = verdict(
            vec![
                finding(Unknown, "a"),
                finding(Degraded, "b"),
                finding(Failing, "c"),
                finding(Degraded, "d"),
            ],
            1,
        );
        assert_eq!(v.status, Failing);
        assert_eq!(v.reasons, ["c", "b", "d", "a"]);
        assert_eq!(
            verdict(vec![finding(Unknown, "x")], 0),
            Verdict::unknown("x")
        );
        let many = (0..MAX_REASONS + 3)
            .map(|i| finding(Degraded, &i.to_string()))
            .collect();
        let v = verdict(many, 0);
        assert_eq!(v.reasons.len(), MAX_REASONS + 1);
        assert_eq!(v.reasons.last().unwrap(), "... and 3 more");
    }
}
