//! Redfish hardware probes against sushy-tools' static emulator
//! (`sushy-static`, installed by `.ci/run`): the probe reads a mock BMC's
//! power supplies, fans and system, behind a TLS front that checks basic
//! credentials (the emulator checks none); and one dead power supply of
//! the primary's redundant pair (Critical, the other OK) moves the primary
//! by a planned switchover under a write load, without a client error or a
//! lost commit.

mod common;

use base64::Engine;
use common::redfish::{Gate, Sushy};
use common::switching::{admin, count, has, moved_under_load, node_column, timeline};
use common::{http_request, private_pair, wait_until as eventually, Proxy, USERS};
use switchyard::cluster::hardware::{probe, HardwareSpec, HardwareStatus, Verdict};
use switchyard::local_cluster::{CLUSTER_PASSWORD, CLUSTER_USER};

const USER: &str = "probe";
const PASSWORD: &str = "pa55-w0rd";

/// The probe `hardware = { body }` as the config loader takes it.
fn spec(body: &str) -> HardwareSpec {
    let toml =
        format!("[cluster]\nnodes = [{{ addr = \"127.0.0.1:5432\", hardware = {{ {body} }} }}]\n");
    let config = switchyard::config::load_str(&toml).expect("a valid probe");
    config.cluster.nodes[0].resolve().hardware.unwrap()
}

/// The emulator behind a TLS front that wants `PASSWORD`; the probe body
/// reaching it with `password`.
struct Bmc {
    sushy: Sushy,
    gate: Gate,
    ca_file: String,
}

impl Bmc {
    async fn start() -> Bmc {
        let sushy = Sushy::start().await;
        let ca = common::certs::Ca::new("bmc CA");
        let (cert, key) = ca.leaf(&["127.0.0.1"], "bmc", false);
        let ca_file = sushy.dir().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let gate = Gate::start(sushy.addr, &cert, &key, &basic(USER, PASSWORD)).await;
        Bmc {
            sushy,
            gate,
            ca_file: ca_file.display().to_string(),
        }
    }

    fn body(&self, password: &str, extra: &str) -> String {
        format!(
            "redfish = \"{}\", ca_file = \"{}\", username = \"{USER}\", password = \"{password}\"{extra}",
            self.gate.url(),
            self.ca_file
        )
    }
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Probes once; checks the status and that some reason holds `needle`.
async fn expect(spec: &HardwareSpec, status: HardwareStatus, needle: &str) -> Verdict {
    let v = probe(spec).await;
    assert_eq!(v.status, status, "{v:?}");
    assert!(
        v.reasons.iter().any(|r| r.contains(needle)),
        "{needle}: {v:?}"
    );
    v
}

#[tokio::test]
async fn the_probe_reads_the_emulator() {
    let bmc = Bmc::start().await;
    let tls = spec(&bmc.body(PASSWORD, ", timeout = \"3s\""));
    assert_eq!(probe(&tls).await, Verdict::ok());
    // Every request carried the credentials: root, 2 collections, chassis,
    // power, thermal, system.
    let wanted = format!("Basic {}", basic(USER, PASSWORD));
    assert_eq!(bmc.gate.take_seen(), vec![wanted; 7]);
    // Plain HTTP straight to the emulator, no credentials: a lab BMC.
    let plain = spec(&format!("redfish = \"{}\"", bmc.sushy.url()));
    assert_eq!(probe(&plain).await, Verdict::ok());

    // Each change on disk shows at the next probe. PS3's bay is empty
    // throughout, with no health.
    let ps1 = "power supply \"PS1\" at /redfish/v1/Chassis/1U/Power";
    bmc.sushy.set_psu(0, "Enabled", Some("Warning"));
    expect(
        &tls,
        HardwareStatus::Degraded,
        &format!("{ps1}: Health = \"Warning\" -> degraded"),
    )
    .await;
    // A dead supply beside a healthy one: redundancy is lost, power is not.
    bmc.sushy.set_psu(0, "Enabled", Some("Critical"));
    expect(
        &tls,
        HardwareStatus::Degraded,
        &format!("{ps1}: Health = \"Critical\" -> failing; 1 other supply OK: redundancy lost -> degraded"),
    )
    .await;
    // Both gone: the host runs on nothing it can count on.
    bmc.sushy.set_psu(1, "Enabled", Some("Critical"));
    expect(
        &tls,
        HardwareStatus::Failing,
        &format!("{ps1}: Health = \"Critical\" -> failing"),
    )
    .await;
    bmc.sushy.set_psu(1, "Enabled", Some("OK"));
    bmc.sushy.set_psu(0, "Enabled", Some("OK"));
    // An absent supply is no failure, whatever health it claims; present, it is.
    bmc.sushy.set_psu(2, "Absent", Some("Critical"));
    assert_eq!(probe(&tls).await, Verdict::ok());
    bmc.sushy.set_psu(2, "Enabled", Some("Critical"));
    expect(&tls, HardwareStatus::Degraded, "power supply \"PS3\"").await;
    bmc.sushy.set_psu(2, "Absent", None);
    bmc.sushy.set_fan("Warning");
    expect(&tls, HardwareStatus::Degraded, "fan \"Fan1\"").await;
    bmc.sushy.set_fan("OK");
    bmc.sushy.set_power_state("Off");
    expect(
        &tls,
        HardwareStatus::Failing,
        "system \"db1\" at /redfish/v1/Systems/db1: PowerState = \"Off\"",
    )
    .await;
    bmc.sushy.set_power_state("On");

    // The newer layout: a request per power supply and fan.
    bmc.sushy.set_subsystems(true);
    assert_eq!(probe(&tls).await, Verdict::ok());
    bmc.sushy.set_psu(1, "Enabled", Some("Warning"));
    expect(
        &tls,
        HardwareStatus::Degraded,
        "power supply \"PS2\" at /redfish/v1/Chassis/1U/PowerSubsystem/PowerSupplies/2",
    )
    .await;
    bmc.sushy.set_psu(1, "Enabled", Some("OK"));
    bmc.sushy.set_subsystems(false);

    // What cannot be read is unknown, and a finding still outranks it.
    // (Every change rewrites the whole tree: the corruption comes last.)
    bmc.sushy.corrupt("Chassis/1U/Thermal", "{\"Fans\": [");
    expect(
        &tls,
        HardwareStatus::Unknown,
        "/redfish/v1/Chassis/1U/Thermal: not JSON",
    )
    .await;
    bmc.sushy.set_psu(0, "Enabled", Some("Warning"));
    bmc.sushy.corrupt("Chassis/1U/Thermal", "{\"Fans\": [");
    let v = expect(&tls, HardwareStatus::Degraded, "not JSON").await;
    assert!(v.reasons[0].contains("PS1"), "{v:?}");
    bmc.sushy.set_psu(0, "Enabled", Some("OK"));
    assert_eq!(probe(&tls).await, Verdict::ok());

    // Wrong credentials are refused by the BMC, and never shown.
    bmc.gate.take_seen();
    let wrong = probe(&spec(&bmc.body("not-the-password", ""))).await;
    assert_eq!(wrong.status, HardwareStatus::Unknown, "{wrong:?}");
    assert!(wrong.reasons[0].contains("HTTP status 401"), "{wrong:?}");
    assert!(!format!("{wrong:?}").contains("not-the-password"));
    assert_eq!(
        bmc.gate.take_seen(),
        [format!("Basic {}", basic(USER, "not-the-password"))]
    );

    // A BMC that is gone.
    let addr = bmc.sushy.addr;
    drop(bmc);
    expect(
        &plain,
        HardwareStatus::Unknown,
        &format!("http://{addr}/redfish/v1: cannot connect"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_power_supply_of_a_pair_moves_the_primary_without_client_errors() {
    let (cluster, primary, replica) = private_pair().await;
    let bmc = Bmc::start().await;
    let hw = bmc.body(PASSWORD, ", interval = \"200ms\", timeout = \"1s\"");
    let toml = format!(
        "{USERS}\n[failover]\nhold_timeout = \"20s\"\nswitchover_on_degraded = true\n\
         [cluster]\nnodes = [{{ name = \"db1\", addr = \"{}\", hardware = {{ {hw} }} }}, \
         {{ name = \"db2\", addr = \"{}\" }}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        primary.addr(),
        replica.addr()
    );
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    eventually(10, "hardware ok", || async {
        node_column(&admin, "db1", "hardware").await == "ok"
    })
    .await;
    // One supply of a redundant pair dies: the host still has power, but no
    // spare. The primary moves before the second one goes.
    let dies = async { bmc.sushy.set_psu(0, "Enabled", Some("Critical")) };
    let v = moved_under_load(&proxy, http, (&primary, &replica), "degraded", dies).await;
    assert!(
        v["nodes"][0]["hardware_reasons"][0]
            .as_str()
            .unwrap()
            .contains("power supply \"PS1\""),
        "{v}"
    );
    let events = timeline(http).await;
    for kind in ["hardware_degraded", "switchover_started"] {
        assert_eq!(count(&events, kind), 1, "{kind}: {events:?}");
    }
    assert!(has(&events, "writes_resumed", "db2"), "{events:?}");
    // A node that still works is moved cooperatively, never failed over.
    assert_eq!(count(&events, "failover_started"), 0, "{events:?}");
    assert_eq!(count(&events, "switchover_failed"), 0, "{events:?}");
    let (_, raw_events) = http_request(http, "GET", "/events").await;
    for shown in [&v.to_string(), &raw_events] {
        assert!(!shown.contains(PASSWORD), "the BMC password leaked");
    }
}

/// The harness's emulator starts even when the port it picked is taken
/// before the emulator binds it: `free_port` finds a port free but cannot
/// hold it, and the tests beside this one bind ports too. The emulator
/// exits ("Address already in use") and is started again on a fresh port.
#[tokio::test]
async fn the_harness_emulator_moves_to_another_port_when_its_own_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let sushy = Sushy::start_preferring(port).await;
    assert_ne!(sushy.addr.port(), port);
    let (code, body) = http_request(sushy.addr, "GET", "/redfish/v1").await;
    assert_eq!(code, 200, "{body}");
}
