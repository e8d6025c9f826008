//! `Idempotency-Key` on the creating POSTs: a rerun answers the first success, another
//! request under the same key is refused, and without a key nothing changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn v1v3(name: &str, seed: u8) -> reqwest::multipart::Form {
    form(&[("name", name), ("type", "wifi"), ("push_method", "V1V3")], Some(("fw.bin", image(2048, seed))))
}

impl Session {
    async fn upload_keyed(&self, product_key: &str, key: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/products/{product_key}/firmware")))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    async fn post_keyed(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        let r = self.client.post(self.url(path)).bearer_auth(&self.token).header("Idempotency-Key", key);
        r.json(&body).send().await.unwrap()
    }

    async fn import_keyed(&self, product_key: &str, key: &str, csv: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/products/{product_key}/devices/import")))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .header("content-type", "text/csv")
            .body(csv.to_owned())
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn an_upload_rerun_under_its_key_answers_the_first_firmware_and_stores_nothing_new() {
    let mut s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let first = s.upload_keyed(&pk, "upload-1", v1v3("v1", 1)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotency-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let files = s.stored_files();

    // Same key, same form and file (a new multipart boundary): the first answer, replayed.
    let again = s.upload_keyed(&pk, "upload-1", v1v3("v1", 1)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(s.firmware_count(&pk).await, 1);
    assert_eq!(s.stored_files(), files, "the replayed upload's staging file is gone");

    // Same key, another file or another name: refused, nothing created.
    for other in [v1v3("v1", 2), v1v3("v1 again", 1)] {
        let e =
            expect_error(s.upload_keyed(&pk, "upload-1", other).await, StatusCode::CONFLICT, "idempotency_key_reused")
                .await;
        assert!(e["message"].as_str().unwrap().contains("Idempotency-Key"), "{e}");
    }
    assert_eq!(s.firmware_count(&pk).await, 1);

    // Without a key, today's answer: V1V3 uploads create a new firmware each time.
    expect_status(s.upload(&pk, v1v3("v1", 1)).await, StatusCode::CREATED).await;
    assert_eq!(s.firmware_count(&pk).await, 2);

    // A refused upload is not remembered: the key stays free for a request that succeeds.
    let tiny = form(&[("name", "t"), ("type", "wifi"), ("push_method", "V1V3")], Some(("t.bin", image(10, 3))));
    expect_error(s.upload_keyed(&pk, "upload-2", tiny).await, StatusCode::BAD_REQUEST, "firmware_too_small").await;
    expect_status(s.upload_keyed(&pk, "upload-2", v1v3("v3", 3)).await, StatusCode::CREATED).await;
    assert_eq!(s.firmware_count(&pk).await, 3);

    // Keys are per tenant: another tenant's identical request under the same key creates.
    s.api.t.domain.create_admin("other", "boss", ADMIN_PASSWORD).await.unwrap();
    let acme = std::mem::replace(&mut s.token, login(&s.client, &s.api, "boss", ADMIN_PASSWORD).await);
    let pk2 = s.create_product("lamp").await;
    expect_status(s.upload_keyed(&pk2, "upload-1", v1v3("v1", 1)).await, StatusCode::CREATED).await;
    assert_eq!(s.firmware_count(&pk2).await, 1);
    s.token = acme;
    assert_eq!(s.firmware_count(&pk).await, 3);
}

#[tokio::test]
async fn a_bad_key_is_refused_before_anything_happens() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    for bad in ["with space", &"k".repeat(256)] {
        let e =
            expect_error(s.upload_keyed(&pk, bad, v1v3("v1", 1)).await, StatusCode::BAD_REQUEST, "invalid_field").await;
        assert_eq!(e["details"]["field"], "Idempotency-Key");
    }
    assert_eq!(s.firmware_count(&pk).await, 0);
}

#[tokio::test]
async fn an_import_rerun_under_its_key_answers_the_first_report() {
    let s = Session::start().await;
    let pk = s.create_product("lamp").await;
    let csv = "mac\n5CCF7F000001\n5CCF7F000002\n";
    let first = expect_status(s.import_keyed(&pk, "import-1", csv).await, StatusCode::OK).await;
    assert_eq!(
        first["added"].as_array().map(Vec::len).or(first["added"].as_i64().map(|n| n as usize)),
        Some(2),
        "{first}"
    );
    // Unkeyed, a second import reports the devices unchanged; keyed, the first report again.
    let replay = expect_status(s.import_keyed(&pk, "import-1", csv).await, StatusCode::OK).await;
    assert_eq!(replay, first);
    expect_error(
        s.import_keyed(&pk, "import-1", "mac\n5CCF7F000003\n").await,
        StatusCode::CONFLICT,
        "idempotency_key_reused",
    )
    .await;
    let devices = expect_status(s.get(&format!("/api/v1/products/{pk}/devices")).await, StatusCode::OK).await;
    assert_eq!(devices["total"], 2);
}

#[tokio::test]
async fn a_rule_create_rerun_under_its_key_answers_the_first_rule() {
    let f = crate::rules::Fleet::start().await;
    f.device("5CCF7F000001", "04020006", true).await;
    f.device("5CCF7F000002", "04020006", true).await;
    let fw = f.firmware("04020007", false).await;
    let body = crate::rules::rule_body(
        json!({ "name": "ci", "target": "macs", "macs": "5CCF7F000001" }),
        &["04020006"],
        ("2026-01-01", "2026-01-31"),
        (0, 24),
    );
    let s = &f.s;
    let path = format!("/api/v1/firmware/{fw}/rules");
    let rule = expect_status(s.post_keyed(&path, "rule-1", body.clone()).await, StatusCode::CREATED).await;
    let again = expect_status(s.post_keyed(&path, "rule-1", body.clone()).await, StatusCode::CREATED).await;
    assert_eq!(again, rule);
    let mut changed = body.clone();
    changed["macs"] = json!("5CCF7F000002");
    expect_error(s.post_keyed(&path, "rule-1", changed).await, StatusCode::CONFLICT, "idempotency_key_reused").await;
    let rules = expect_status(s.get(&path).await, StatusCode::OK).await;
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    // Without a key a second identical rule is created, as before.
    expect_status(s.post(&path, body).await, StatusCode::CREATED).await;
    assert_eq!(expect_status(s.get(&path).await, StatusCode::OK).await.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_key_still_running_answers_in_progress_until_its_request_dies_and_old_keys_are_forgotten() {
    use ota_domain::access::{Authorized, Write};
    use ota_domain::idempotency::{KEEP_MS, PENDING_TAKEOVER_MS, Reservation};
    let mut s = Session::start().await;
    s.use_api_token().await;
    let domain = &s.api.t.domain;
    let who = Authorized::<Write>::check(domain.token_principal(&s.token).await.unwrap()).unwrap();
    let print = ota_domain::idempotency::fingerprint("POST", "/x", b"1");

    assert_eq!(domain.idempotency_reserve(&who, "k", &print).await.unwrap(), Reservation::Run);
    // The first request is still running: a second is told to retry, not run twice.
    let e = domain.idempotency_reserve(&who, "k", &print).await.unwrap_err();
    assert_eq!(e.code(), ota_wire::ErrorCode::IdempotencyKeyInProgress);
    // Over HTTP: 409 with Retry-After while the first is running.
    let pk = s.create_product("lamp").await;
    let path = format!("/api/v1/products/{pk}/devices/import");
    let csv = "mac\n5CCF7F000001\n";
    let content = [&[0u8][..], csv.as_bytes()].concat();
    let running = ota_domain::idempotency::fingerprint("POST", &path, &content);
    assert_eq!(domain.idempotency_reserve(&who, "k2", &running).await.unwrap(), Reservation::Run);
    let send = |key: &'static str, product: String| {
        s.client
            .post(s.url(&format!("/api/v1/products/{product}/devices/import")))
            .bearer_auth(&s.token)
            .header("Idempotency-Key", key)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
    };
    let r = send("k2", pk.clone()).await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, StatusCode::CONFLICT, "idempotency_key_in_progress").await;
    // A request that fails gives its key back: the key is free for the next one.
    let r = send("k3", "0".repeat(32)).await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "product_not_found").await;
    expect_status(send("k3", pk.clone()).await.unwrap(), StatusCode::OK).await;

    // A reservation whose request died is taken over after a while.
    s.api.t.clock.advance(chrono::Duration::milliseconds(PENDING_TAKEOVER_MS));
    assert_eq!(domain.idempotency_reserve(&who, "k", &print).await.unwrap(), Reservation::Run);
    domain.idempotency_finish(&who, "k", 201, "{\"id\":1}".into()).await.unwrap();
    assert_eq!(
        domain.idempotency_reserve(&who, "k", &print).await.unwrap(),
        Reservation::Replay { status: 201, body: "{\"id\":1}".into() }
    );
    // Forgotten after a day (the maintenance task), then the key is new again.
    assert_eq!(domain.forget_idempotency_keys().await.unwrap(), 0);
    s.api.t.clock.advance(chrono::Duration::milliseconds(KEEP_MS));
    assert_eq!(domain.forget_idempotency_keys().await.unwrap(), 3);
    assert_eq!(domain.idempotency_reserve(&who, "k", &print).await.unwrap(), Reservation::Run);
}
