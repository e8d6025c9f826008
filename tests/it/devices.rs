//! The device registry through the operator API: import, list and search, version
//! distribution, edit and delete.

use ota_domain::upgrades::{Check, CheckAuth};
use ota_wire::dto::{FirmwareType, PushMethod, RegisteredVia};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

async fn import(s: &Session, pk: &str, csv: &str) -> reqwest::Response {
    s.import_csv(pk, csv).await
}

/// A registered device that reported Wi-Fi and MCU versions through V4.1 checks.
async fn device(s: &Session, pk: &str, mac: &str, wifi_sw: &str) -> String {
    let d = &s.api.t.domain;
    let did = d.register_device(pk, mac, "PASSCODEAA", RegisteredVia::Plain, None).await.unwrap();
    for (fw_type, hw, sw) in [(FirmwareType::Wifi, "00ESP826", wifi_sw), (FirmwareType::Mcu, "00STM032", "00010001")] {
        let check = Check {
            did: did.clone(),
            auth: CheckAuth::Passcode("PASSCODEAA".into()),
            method: PushMethod::V41,
            fw_type,
            hard: Some(hw.into()),
            soft: Some(sw.into()),
            fid: None,
            ip: Some("10.0.0.7".into()),
            node: None,
        };
        assert!(d.device_check(check).await.unwrap().is_err(), "nothing is offered");
    }
    did
}

fn macs(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|d| d["mac"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn import_search_distribution_edit_delete() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;

    let csv = "mac,region\n5CCF7F000001,广东省-广州市\n5c:cf:7f:00:00:02,China/Zhejiang/Hangzhou\nbad,x\n5CCF7F000001,dup\n5CCF7F000003,\n";
    let report = expect_status(import(&s, &pk, csv).await, StatusCode::OK).await;
    assert_eq!(
        (report["added"].as_u64(), report["updated"].as_u64(), report["unchanged"].as_u64()),
        (Some(3), Some(0), Some(0))
    );
    let lines: Vec<u64> = report["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![4, 5]);
    // The same file again changes nothing; a new region updates.
    let again = expect_status(import(&s, &pk, csv).await, StatusCode::OK).await;
    assert_eq!((again["added"].as_u64(), again["unchanged"].as_u64()), (Some(0), Some(3)));
    let moved = expect_status(import(&s, &pk, "mac,city\n5CCF7F000003,Shenzhen\n").await, StatusCode::OK).await;
    assert_eq!(moved["updated"], 1);
    expect_error(import(&s, &pk, "serial\n1\n").await, StatusCode::BAD_REQUEST, "invalid_csv").await;
    expect_error(import(&s, "0".repeat(32).as_str(), csv).await, StatusCode::NOT_FOUND, "product_not_found").await;

    // An imported MAC that registers keeps its record and region, and gets a did.
    let did = device(&s, &pk, "5CCF7F000001", "04020006").await;
    device(&s, &pk, "5CCF7F000004", "04020006").await;
    device(&s, &pk, "5CCF7F000005", "04020019").await;
    let one = expect_status(s.get("/api/v1/devices/5ccf7f000001").await, StatusCode::OK).await;
    assert_eq!(one["did"], did.as_str());
    assert_eq!(one["region"]["province"], "广东省");
    assert_eq!(one["registered_via"], "plain");
    assert_eq!(one["push_method"], "V4.1");
    assert_eq!(one["wifi"]["soft_version"], "04020006");
    assert_eq!(one["mcu"]["hard_version"], "00STM032");
    assert_eq!(one["ip"], "10.0.0.7");
    assert_eq!(
        expect_status(s.get(&format!("/api/v1/devices/{did}")).await, StatusCode::OK).await["mac"],
        "5CCF7F000001"
    );

    let list = |q: &'static str| {
        let path = format!("/api/v1/products/{pk}/devices{q}");
        let s = &s;
        async move { expect_status(s.get(&path).await, StatusCode::OK).await }
    };
    assert_eq!(list("").await["total"], 5);
    assert_eq!(macs(&list("?mac=5CCF7F000002").await), vec!["5CCF7F000002"]);
    assert_eq!(list("?mac=5ccf7f").await["total"], 5);
    assert_eq!(macs(&list("?soft_version=04020019").await), vec!["5CCF7F000005"]);
    assert_eq!(list("?type=mcu&soft_version=00010001").await["total"], 3);
    assert_eq!(macs(&list("?city=Hangzhou").await), vec!["5CCF7F000002"]);
    assert_eq!(list("?online=false").await["total"], 5);
    assert_eq!(list("?per_page=2&page=3").await["items"].as_array().unwrap().len(), 1);
    expect_error(
        s.get(&format!("/api/v1/products/{pk}/devices?mac=5c")).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;

    let versions = expect_status(s.get(&format!("/api/v1/products/{pk}/versions")).await, StatusCode::OK).await;
    assert_eq!(
        versions,
        json!([
            { "type": "wifi", "hard_version": "00ESP826", "soft_version": "04020006", "devices": 2, "online": 0 },
            { "type": "wifi", "hard_version": "00ESP826", "soft_version": "04020019", "devices": 1, "online": 0 },
            { "type": "mcu", "hard_version": "00STM032", "soft_version": "00010001", "devices": 3, "online": 0 },
        ])
    );

    let edited = s
        .patch(
            "/api/v1/devices/5CCF7F000004",
            json!({ "country": "China", "city": "Foshan", "metadata": { "batch": 7 } }),
        )
        .await;
    let edited = expect_status(edited, StatusCode::OK).await;
    assert_eq!(edited["region"], json!({ "country": "China", "province": null, "city": "Foshan" }));
    assert_eq!(edited["metadata"], json!({ "batch": 7 }));
    let cleared =
        expect_status(s.patch("/api/v1/devices/5CCF7F000004", json!({ "city": null })).await, StatusCode::OK).await;
    assert_eq!(cleared["region"]["city"], Value::Null);
    assert_eq!(cleared["region"]["country"], "China");
    expect_error(
        s.patch("/api/v1/devices/5CCF7F000004", json!({ "metadata": [1] })).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    expect_error(
        s.patch("/api/v1/devices/5CCF7F000004", json!({ "city": "a/b" })).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;

    expect_error(s.delete(&format!("/api/v1/products/{pk}")).await, StatusCode::CONFLICT, "product_not_empty").await;
    assert_eq!(s.delete("/api/v1/devices/5CCF7F000004").await.status(), StatusCode::NO_CONTENT);
    expect_error(s.get("/api/v1/devices/5CCF7F000004").await, StatusCode::NOT_FOUND, "device_not_found").await;
    expect_error(s.delete("/api/v1/devices/5CCF7F000004").await, StatusCode::NOT_FOUND, "device_not_found").await;
    assert_eq!(list("").await["total"], 4);
}
