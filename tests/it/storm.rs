//! A power-on storm against admission control: a fleet boots at once into a gateway that
//! works on two registrations or provisions, and two logins, at a time. The test holds both
//! slots of each kind while the fleet boots, so refusals are certain, then lets go: every
//! device comes online, with one did per MAC, and checked each of its firmware types exactly
//! once (checks are never refused; a refused check would mean "no update" to the firmware).

use std::collections::BTreeSet;
use std::time::Duration;

use ota_gateway::BusConfig;
use ota_gateway::admission::AdmissionSettings;
use ota_sim::{DeviceHandle, McuVersions, Method};
use reqwest::StatusCode;

use crate::device_plane::{Plane, wait_get};
use crate::support::*;

const DEVICES: usize = 40;

async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    for _ in 0..600 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_booting_at_once_is_refused_where_the_firmware_retries_and_comes_online_completely() {
    let p = Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| {
        g.admission =
            AdmissionSettings { device_calls_in_flight: 2, mqtt_logins_in_flight: 2, wait: Duration::from_millis(5) };
    })
    .await;
    let gates = &p.gw.admission;
    let held_calls = [gates.device_calls.enter().await.unwrap(), gates.device_calls.enter().await.unwrap()];
    let held_logins = [gates.logins.enter().await.unwrap(), gates.logins.enter().await.unwrap()];

    let devices: Vec<(String, bool, DeviceHandle)> = (0..DEVICES)
        .map(|i| {
            let mac = format!("5CCF7F57{i:04X}");
            let method = if i % 3 == 0 { Method::V4 } else { Method::V41 };
            let mut spec = p.spec(&mac, method);
            let mcu = i % 2 == 0;
            if mcu {
                spec.mcu = Some(McuVersions { hw: "00STM032".into(), sw: "00010001".into() });
            }
            (mac, mcu, p.spawn(spec))
        })
        .collect();

    // Every device is refused at least once before any registration gets through.
    wait_until("a refusal of every device's registration", || gates.device_calls.refused() >= DEVICES as u64).await;
    assert!(devices.iter().all(|(_, _, d)| d.snapshot().did.is_none()), "a registration got past the full gate");
    drop(held_calls);

    // Registered and provisioned devices now log in, and find the login slots taken.
    wait_until("a refused login", || gates.logins.refused() > 0).await;
    assert_eq!(
        devices.iter().filter(|(_, _, d)| d.snapshot().online).count(),
        0,
        "a device logged in past the full gate"
    );
    drop(held_logins);

    let online = format!("/api/v1/products/{}/devices?online=true&per_page=1", p.pk);
    wait_get(&p, &online, "the whole fleet online", 30, |v| v["total"] == DEVICES).await;

    let all = format!("/api/v1/products/{}/devices?per_page=1", p.pk);
    assert_eq!(expect_status(p.s.get(&all).await, StatusCode::OK).await["total"], DEVICES, "one device per MAC");
    let mut dids = BTreeSet::new();
    let mut refused_connacks = 0;
    for (mac, mcu, device) in &devices {
        let snap = device.snapshot();
        let c = &snap.counters;
        assert_eq!(c.boots, 1, "{mac} never had to reboot: {c:?}");
        assert_eq!(c.checks, if *mcu { 2 } else { 1 }, "{mac} checked each firmware type once: {c:?}");
        assert_eq!(c.mqtt_logins, 1, "{mac}: {c:?}");
        refused_connacks += c.mqtt_refusals;
        assert!(dids.insert(snap.did.clone().expect("registered")), "{mac} shares its did");
        let view = expect_status(p.s.get(&format!("/api/v1/devices/{mac}")).await, StatusCode::OK).await;
        assert_eq!(view["did"], snap.did.unwrap().as_str(), "{mac}: the did it was given is the one on record");
    }
    assert!(refused_connacks > 0, "the refused logins reached the devices as refused CONNACKs");
    assert_eq!(u64::from(refused_connacks), gates.logins.refused(), "every refused login was answered CONNACK 3");
}
