use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn products_are_created_listed_renamed_and_deleted() {
    let s = Session::start().await;
    let v = expect_status(s.post("/api/v1/products", json!({"name": "Smart lamp"})).await, StatusCode::CREATED).await;
    let pk = v["product_key"].as_str().unwrap();
    let secret = v["product_secret"].as_str().unwrap();
    for key in [pk, secret] {
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{key}");
    }
    assert_ne!(pk, secret);

    let given = "0123456789abcdef0123456789abcdef";
    let v = expect_status(
        s.post(
            "/api/v1/products",
            json!({"name": "Plug", "product_key": given, "product_secret": "ffffffffffffffffffffffffffffffff"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(v["product_key"], given);
    let r = s.post("/api/v1/products", json!({"name": "Dup", "product_key": given})).await;
    let e = expect_error(r, StatusCode::CONFLICT, "product_key_taken").await;
    assert_eq!(e["details"]["field"], "product_key");
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "product_key": "0123456789ABCDEF0123456789ABCDEF"}), "product_key"),
        (json!({"name": "x", "product_key": "abc"}), "product_key"),
        (json!({"name": "x", "product_secret": "zz"}), "product_secret"),
    ] {
        let e = expect_error(s.post("/api/v1/products", body).await, StatusCode::BAD_REQUEST, "invalid_field").await;
        assert_eq!(e["details"]["field"], field);
    }
    let e =
        expect_error(s.post("/api/v1/products", json!({"nom": "x"})).await, StatusCode::BAD_REQUEST, "missing_field")
            .await;
    assert_eq!(e["details"]["field"], "name");

    let list = expect_status(s.get("/api/v1/products").await, StatusCode::OK).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["product_key"], given, "newest first");

    let v =
        expect_status(s.patch(&format!("/api/v1/products/{given}"), json!({"name": "Plug 2"})).await, StatusCode::OK)
            .await;
    assert_eq!(v["name"], "Plug 2");
    expect_status(s.delete(&format!("/api/v1/products/{given}")).await, StatusCode::NO_CONTENT).await;
    expect_error(s.get(&format!("/api/v1/products/{given}")).await, StatusCode::NOT_FOUND, "product_not_found").await;
    expect_error(s.get("/api/v1/nothing-here").await, StatusCode::NOT_FOUND, "route_not_found").await;
}
