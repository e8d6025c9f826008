use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

const HW: &str = "00ESP826";

fn v41(name: &str, sw: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    form(
        &[("name", name), ("type", "wifi"), ("push_method", "V4.1"), ("hard_version", HW), ("soft_version", sw)],
        Some(("fw.bin", bytes)),
    )
}

#[tokio::test]
async fn upload_computes_digests_and_download_returns_the_exact_bytes() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let bytes = image(5000, 7);
    let v = expect_status(s.upload(&pk, v41("v2.1", "04020021", bytes.clone())).await, StatusCode::CREATED).await;
    assert_eq!(v["size"], 5000);
    assert_eq!(v["md5"], md5_hex(&bytes));
    assert_eq!(v["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(v["crc32"], format!("{:08x}", crc32(&bytes)));
    assert_eq!(v["verified"], false);
    assert_eq!(v["push_status"], "not_started");
    assert_eq!(v["fid"], Value::Null);
    assert_eq!(v["type"], "wifi");
    assert_eq!(v["push_method"], "V4.1");

    let id = v["id"].as_i64().unwrap();
    let r = s.get(&format!("/api/v1/firmware/{id}/file")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hex::encode(Sha256::digest(&bytes))));
    assert_eq!(r.headers()["content-disposition"], "attachment; filename=\"fw.bin\"");
    assert_eq!(r.headers()["content-length"], "5000");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.as_ref(), bytes.as_slice());
    assert_eq!(md5_hex(&body), v["md5"].as_str().unwrap());

    let r = s
        .client
        .get(s.url(&format!("/api/v1/firmware/{id}/file")))
        .bearer_auth(&s.token)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

fn crc32(data: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), written out so the test does not trust the server's crate.
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn every_validation_rule_answers_its_code_and_stores_nothing() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let ok = image(2048, 1);
    let base =
        [("name", "v1"), ("type", "wifi"), ("push_method", "V4.1"), ("hard_version", HW), ("soft_version", "04020021")];
    let without = |skip: &str| -> Vec<(&str, &str)> { base.iter().copied().filter(|(k, _)| *k != skip).collect() };
    let with = |key: &str, value: &'static str| -> Vec<(&'static str, &'static str)> {
        base.iter().map(|&(k, v)| if k == key { (k, value) } else { (k, v) }).collect()
    };
    let cases: Vec<(reqwest::multipart::Form, StatusCode, &str, Option<&str>)> = vec![
        (form(&without("name"), Some(("fw.bin", ok.clone()))), StatusCode::BAD_REQUEST, "missing_field", Some("name")),
        (
            form(&with("name", "bad name"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            form(&with("name", "n/a"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (form(&without("type"), Some(("fw.bin", ok.clone()))), StatusCode::BAD_REQUEST, "missing_field", Some("type")),
        (
            form(&with("type", "zigbee"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("type"),
        ),
        (
            form(&without("push_method"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some("push_method"),
        ),
        (
            form(&with("push_method", "V5"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("push_method"),
        ),
        (
            form(&with("hard_version", "00ESP82"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("hard_version"),
        ),
        (
            form(&with("soft_version", "0402-021"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("soft_version"),
        ),
        (
            form(&without("hard_version"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some("hard_version"),
        ),
        (
            form(&without("soft_version"), Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some("soft_version"),
        ),
        (form(&with("push_method", "V4"), Some(("fw.bin", ok.clone()))).text("x", "y"), StatusCode::CREATED, "", None),
        (
            form(&[("name", "v1"), ("type", "mcu"), ("push_method", "V1V3")], Some(("fw.bin", ok.clone()))),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("push_method"),
        ),
        (form(&base, None), StatusCode::BAD_REQUEST, "missing_field", Some("file")),
        (form(&base, Some(("fw.hex", ok.clone()))), StatusCode::BAD_REQUEST, "invalid_file_extension", Some("file")),
        (form(&base, Some(("fw.img", ok.clone()))), StatusCode::BAD_REQUEST, "invalid_file_extension", Some("file")),
        (form(&base, Some(("fw", ok.clone()))), StatusCode::BAD_REQUEST, "invalid_file_extension", Some("file")),
        (form(&base, Some(("fw.bin", image(1023, 1)))), StatusCode::BAD_REQUEST, "firmware_too_small", Some("file")),
        (
            form(&with("type", "mcu"), Some(("mcu.hex", image(4096, 2)))),
            StatusCode::BAD_REQUEST,
            "invalid_intel_hex",
            Some("file"),
        ),
        (
            form(&with("type", "mcu"), Some(("mcu.exe", image(4096, 2)))),
            StatusCode::BAD_REQUEST,
            "invalid_file_extension",
            Some("file"),
        ),
    ];
    let mut created = 0;
    for (i, (f, status, code, field)) in cases.into_iter().enumerate() {
        let r = s.upload(&pk, f).await;
        if status == StatusCode::CREATED {
            expect_status(r, status).await;
            created += 1;
            continue;
        }
        let v = expect_error(r, status, code).await;
        assert_eq!(v["details"]["field"].as_str(), field, "case {i}: {v}");
        assert_eq!(s.firmware_count(&pk).await, created, "case {i} stored a row");
        assert_eq!(s.stored_files(), created as usize, "case {i} left a file");
    }

    // Not multipart at all.
    let r = s.post(&format!("/api/v1/products/{pk}/firmware"), json!({"name": "x"})).await;
    expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    // Unknown product.
    let r = s.upload("0123456789abcdef0123456789abcdef", v41("v1", "04020021", ok.clone())).await;
    expect_error(r, StatusCode::NOT_FOUND, "product_not_found").await;
    // A text field too long.
    let long = "x".repeat(2000);
    let r = s.upload(&pk, form(&[("name", long.as_str())], Some(("fw.bin", ok.clone())))).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(s.firmware_count(&pk).await, created);
    assert_eq!(s.stored_files(), created as usize);
}

#[tokio::test]
async fn valid_intel_hex_and_bin_are_accepted_for_mcu() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let hex_file = intel_hex(2048);
    let f = form(
        &[
            ("name", "mcu_1"),
            ("type", "mcu"),
            ("push_method", "V4.1"),
            ("hard_version", "00000001"),
            ("soft_version", "00000002"),
        ],
        Some(("app.HEX", hex_file.clone())),
    );
    let v = expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    assert_eq!(v["md5"], md5_hex(&hex_file));
    let f = form(
        &[
            ("name", "mcu_2"),
            ("type", "mcu"),
            ("push_method", "V4"),
            ("hard_version", "00000001"),
            ("soft_version", "00000002"),
        ],
        Some(("app.bin", image(3000, 3))),
    );
    expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
}

#[tokio::test]
async fn versions_come_from_an_official_file_name_when_omitted() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let f = form(
        &[("name", "v19"), ("type", "wifi"), ("push_method", "V4.1")],
        Some(("GAgent_00ESP826_04020019_16101715.bin", image(2048, 4))),
    );
    let v = expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    assert_eq!(v["hard_version"], "00ESP826");
    assert_eq!(v["soft_version"], "04020019");
    assert_eq!(v["file_name"], "GAgent_00ESP826_04020019_16101715.bin");
    // Given versions win over the name.
    let f = form(
        &[("name", "v20"), ("type", "wifi"), ("push_method", "V4.1"), ("soft_version", "04020020")],
        Some(("GAgent_00ESP826_04020019_16101715.bin", image(2048, 5))),
    );
    let v = expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    assert_eq!((v["hard_version"].as_str(), v["soft_version"].as_str()), (Some("00ESP826"), Some("04020020")));
}

#[tokio::test]
async fn fids_count_per_product_for_v1v3_and_per_series_for_v4() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let other = s.create_product("plug").await;
    let v1v3 = |name: &'static str, seed| {
        form(&[("name", name), ("type", "wifi"), ("push_method", "V1V3")], Some(("fw.bin", image(1500, seed))))
    };
    for (i, name) in ["v1.0", "v1.1", "test"].into_iter().enumerate() {
        let v = expect_status(s.upload(&pk, v1v3(name, i as u8)).await, StatusCode::CREATED).await;
        assert_eq!(v["fid"], i as i64 + 1, "{name}");
        assert_eq!(v["hard_version"], Value::Null);
    }
    let v = expect_status(s.upload(&other, v1v3("v1.0", 9)).await, StatusCode::CREATED).await;
    assert_eq!(v["fid"], 1, "fids are per product");

    let v4 = |ty: &'static str, hw: &'static str, sw: &'static str, seed| {
        form(
            &[("name", "n"), ("type", ty), ("push_method", "V4"), ("hard_version", hw), ("soft_version", sw)],
            Some(("fw.bin", image(1500, seed))),
        )
    };
    let expected = [
        (("wifi", HW, "04000001"), 1),
        (("wifi", HW, "04000001"), 2),
        (("wifi", HW, "04000002"), 1),
        (("mcu", HW, "04000001"), 1),
        (("wifi", "00ESP827", "04000001"), 1),
        (("wifi", HW, "04000001"), 3),
    ];
    for (i, ((ty, hw, sw), fid)) in expected.into_iter().enumerate() {
        let v = expect_status(s.upload(&pk, v4(ty, hw, sw, 20 + i as u8)).await, StatusCode::CREATED).await;
        assert_eq!(v["fid"], fid, "upload {i} ({ty} {hw} {sw})");
    }
    // Editing a V4 firmware's versions moves it to the new series' next fid.
    let list =
        expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?push_method=V4&type=mcu")).await, StatusCode::OK)
            .await;
    assert_eq!(list["total"], 1);
    let mcu_id = list["items"][0]["id"].as_i64().unwrap();
    let v = expect_status(
        s.patch(&format!("/api/v1/firmware/{mcu_id}"), json!({"hard_version": HW, "soft_version": "04000001"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["fid"], 1, "unchanged series keeps its fid");
    let v = expect_status(
        s.patch(&format!("/api/v1/firmware/{mcu_id}"), json!({"soft_version": "04000009"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["fid"], 1, "a new, empty series starts at 1");
}

#[tokio::test]
async fn v41_duplicates_are_refused_and_exactly_one_racing_upload_wins() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    expect_status(s.upload(&pk, v41("a", "04020021", image(2048, 1))).await, StatusCode::CREATED).await;
    let r = s.upload(&pk, v41("b", "04020021", image(2048, 2))).await;
    expect_error(r, StatusCode::CONFLICT, "firmware_version_exists").await;
    // Same versions, other type: allowed.
    let f = form(
        &[("name", "m"), ("type", "mcu"), ("push_method", "V4.1"), ("hard_version", HW), ("soft_version", "04020021")],
        Some(("m.bin", image(2048, 3))),
    );
    expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    assert_eq!(s.stored_files(), 2, "the refused duplicate left no file");

    // Eight uploads of one new version at once: exactly one is created.
    let uploads = (0..8u8).map(|i| s.upload(&pk, v41("race", "04020030", image(2048, 100 + i))));
    let results = futures_util::future::join_all(uploads).await;
    let mut created = 0;
    for r in results {
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                expect_error(r, StatusCode::CONFLICT, "firmware_version_exists").await;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(s.firmware_count(&pk).await, 3);
    assert_eq!(s.stored_files(), 3, "losers' files are gone");
}

#[tokio::test]
async fn racing_v4_uploads_get_distinct_consecutive_fids() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let uploads = (0..6u8).map(|i| {
        let f = form(
            &[
                ("name", "n"),
                ("type", "wifi"),
                ("push_method", "V4"),
                ("hard_version", HW),
                ("soft_version", "04000001"),
            ],
            Some(("fw.bin", image(1500, i))),
        );
        s.upload(&pk, f)
    });
    let mut fids: Vec<i64> = Vec::new();
    for r in futures_util::future::join_all(uploads).await {
        fids.push(expect_status(r, StatusCode::CREATED).await["fid"].as_i64().unwrap());
    }
    fids.sort();
    assert_eq!(fids, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn edits_work_until_verified_then_the_firmware_is_locked() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let v = expect_status(s.upload(&pk, v41("a", "04020021", image(2048, 1))).await, StatusCode::CREATED).await;
    let id = v["id"].as_i64().unwrap();
    let path = format!("/api/v1/firmware/{id}");
    let v = expect_status(s.patch(&path, json!({"name": "renamed", "soft_version": "04020022"})).await, StatusCode::OK)
        .await;
    assert_eq!((v["name"].as_str(), v["soft_version"].as_str()), (Some("renamed"), Some("04020022")));
    expect_error(s.patch(&path, json!({"name": "bad name"})).await, StatusCode::BAD_REQUEST, "invalid_field").await;
    expect_error(s.patch(&path, json!({"hard_version": "short"})).await, StatusCode::BAD_REQUEST, "invalid_field")
        .await;
    let e = expect_error(s.patch(&path, json!({"name": 5})).await, StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(e["details"]["field"], "name");

    // Replace the file.
    let new_bytes = image(4096, 9);
    let r = s
        .client
        .put(s.url(&format!("{path}/file")))
        .bearer_auth(&s.token)
        .multipart(form(&[], Some(("new.bin", new_bytes.clone()))))
        .send()
        .await
        .unwrap();
    let v = expect_status(r, StatusCode::OK).await;
    assert_eq!(v["md5"], md5_hex(&new_bytes));
    assert_eq!(v["file_name"], "new.bin");
    assert_eq!(s.stored_files(), 1, "the replaced file was collected");
    let r = s
        .client
        .put(s.url(&format!("{path}/file")))
        .bearer_auth(&s.token)
        .multipart(form(&[], Some(("x.bin", image(10, 1)))))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "firmware_too_small").await;

    // Another V4.1 with the edited-to versions collides.
    let v2 = expect_status(s.upload(&pk, v41("b", "04020023", image(2048, 2))).await, StatusCode::CREATED).await;
    let r = s.patch(&format!("/api/v1/firmware/{}", v2["id"]), json!({"soft_version": "04020022"})).await;
    expect_error(r, StatusCode::CONFLICT, "firmware_version_exists").await;

    s.api.t.domain.mark_firmware_verified(1, id).await.unwrap();
    let v = expect_status(s.get(&path).await, StatusCode::OK).await;
    assert_eq!(v["verified"], true);
    assert!(v["verified_at"].is_string());
    expect_error(s.patch(&path, json!({"name": "again"})).await, StatusCode::CONFLICT, "firmware_locked").await;
    let r = s
        .client
        .put(s.url(&format!("{path}/file")))
        .bearer_auth(&s.token)
        .multipart(form(&[], Some(("x.bin", image(2048, 5)))))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::CONFLICT, "firmware_locked").await;
    let v = expect_status(s.get(&path).await, StatusCode::OK).await;
    assert_eq!(v["name"], "renamed", "nothing changed");
    assert_eq!(v["md5"], md5_hex(&new_bytes));
}

#[tokio::test]
async fn list_filters_paginates_newest_first_and_delete_collects_unreferenced_files() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let shared = image(2048, 42);
    let a = expect_status(s.upload(&pk, v41("a", "04020021", shared.clone())).await, StatusCode::CREATED).await;
    let b = expect_status(s.upload(&pk, v41("b", "04020022", shared.clone())).await, StatusCode::CREATED).await;
    let f = form(&[("name", "c"), ("type", "wifi"), ("push_method", "V1V3")], Some(("c.bin", image(2048, 43))));
    let c = expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    assert_eq!(s.stored_files(), 2, "equal content is stored once");

    let page = expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?per_page=2")).await, StatusCode::OK).await;
    assert_eq!(page["total"], 3);
    let ids: Vec<i64> = page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![c["id"].as_i64().unwrap(), b["id"].as_i64().unwrap()]);
    let page2 =
        expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?per_page=2&page=2")).await, StatusCode::OK).await;
    assert_eq!(page2["items"][0]["id"], a["id"]);
    let v41_only =
        expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?push_method=V4.1")).await, StatusCode::OK).await;
    assert_eq!(v41_only["total"], 2);
    let unverified =
        expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?verified=false&type=wifi")).await, StatusCode::OK)
            .await;
    assert_eq!(unverified["total"], 3);
    let verified =
        expect_status(s.get(&format!("/api/v1/products/{pk}/firmware?verified=true")).await, StatusCode::OK).await;
    assert_eq!(verified["total"], 0);
    for bad in ["per_page=0", "per_page=201", "page=0", "type=zigbee", "push_method=V9", "verified=maybe", "page=-1"] {
        let r = s.get(&format!("/api/v1/products/{pk}/firmware?{bad}")).await;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await;
    }

    expect_status(s.delete(&format!("/api/v1/firmware/{}", a["id"])).await, StatusCode::NO_CONTENT).await;
    assert_eq!(s.stored_files(), 2, "b still references the shared file");
    expect_status(s.delete(&format!("/api/v1/firmware/{}", b["id"])).await, StatusCode::NO_CONTENT).await;
    assert_eq!(s.stored_files(), 1, "the shared file went with its last reference");
    expect_error(s.delete(&format!("/api/v1/firmware/{}", b["id"])).await, StatusCode::NOT_FOUND, "firmware_not_found")
        .await;
    expect_error(s.get("/api/v1/firmware/abc").await, StatusCode::BAD_REQUEST, "invalid_path").await;
    // A product with firmware cannot be deleted.
    expect_error(s.delete(&format!("/api/v1/products/{pk}")).await, StatusCode::CONFLICT, "product_not_empty").await;
}

#[tokio::test]
async fn oversized_upload_is_refused_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    // Declare 100 MiB but send only the headers: a server that read the body first would hang.
    let addr = s.api.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/products/{pk}/firmware HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 104857600\r\n\r\n",
        s.token
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Read until the error code has arrived or the server closes: the answer may span reads.
    let mut received = Vec::new();
    let read_answer = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            received.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&received).contains("firmware_too_large") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read_answer).await.expect("answered without the body");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("firmware_too_large"), "{text}");

    // Without a Content-Length (chunked), the stream is cut once it passes the limit.
    let small = TestLimit::start(4096).await;
    let r = small.s.upload(&small.pk, v41("big", "04020021", image(10_000, 1))).await;
    let v = expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "firmware_too_large").await;
    assert_eq!(v["details"]["limit_bytes"], 4096);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = image(10_000, 1).chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let f = reqwest::multipart::Form::new()
        .text("name", "big")
        .text("type", "wifi")
        .text("push_method", "V1V3")
        .part("file", reqwest::multipart::Part::stream(body).file_name("big.bin"));
    let r = small.s.upload(&small.pk, f).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "firmware_too_large").await;
    assert_eq!(small.s.firmware_count(&small.pk).await, 0);
    assert_eq!(small.s.stored_files(), 0);
}

/// A server with a small firmware limit.
struct TestLimit {
    s: Session,
    pk: String,
}

impl TestLimit {
    async fn start(limit: u64) -> TestLimit {
        let api = ota_testkit::TestApi::start_with(
            ota_testkit::TestDomain::with_limit(limit),
            ota_api::ApiSettings::default(),
        );
        api.t.domain.create_admin("acme", ADMIN, ADMIN_PASSWORD).await.unwrap();
        let client = reqwest::Client::new();
        let token = login(&client, &api, ADMIN, ADMIN_PASSWORD).await;
        let s = Session { api, client, token };
        let pk = s.create_product("p").await;
        TestLimit { s, pk }
    }
}
