//! Another tenant's resources answer 404 on every endpoint, and nothing changes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn another_tenants_resources_are_not_found_on_every_endpoint() {
    let s = Session::start().await;
    let pk = s.create_product("acme lamp").await;
    let f = form(&[("name", "v1"), ("type", "wifi"), ("push_method", "V1V3")], Some(("fw.bin", image(2048, 1))));
    let fw = expect_status(s.upload(&pk, f).await, StatusCode::CREATED).await;
    let fw_id = fw["id"].as_i64().unwrap();
    let token =
        expect_status(s.post("/api/v1/tokens", json!({"name": "ci", "scopes": ["read"]})).await, StatusCode::CREATED)
            .await;
    let token_id = token["id"].as_i64().unwrap();
    let me = expect_status(s.get("/api/v1/auth/me").await, StatusCode::OK).await;
    let admin_id = me["user_id"].as_i64().unwrap();

    // A second tenant with its own admin.
    s.api.t.domain.create_admin("globex", "mallory", "mallory-password").await.unwrap();
    let other = login(&s.client, &s.api, "mallory", "mallory-password").await;
    let send = |method: Method, path: String, body: Option<serde_json::Value>| {
        let mut req = s.client.request(method, s.url(&path)).bearer_auth(&other);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let cases = vec![
        (Method::GET, format!("/api/v1/products/{pk}"), None, "product_not_found"),
        (Method::PATCH, format!("/api/v1/products/{pk}"), Some(json!({"name": "mine"})), "product_not_found"),
        (Method::DELETE, format!("/api/v1/products/{pk}"), None, "product_not_found"),
        (Method::GET, format!("/api/v1/products/{pk}/firmware"), None, "product_not_found"),
        (Method::GET, format!("/api/v1/firmware/{fw_id}"), None, "firmware_not_found"),
        (Method::PATCH, format!("/api/v1/firmware/{fw_id}"), Some(json!({"name": "mine"})), "firmware_not_found"),
        (Method::DELETE, format!("/api/v1/firmware/{fw_id}"), None, "firmware_not_found"),
        (Method::GET, format!("/api/v1/firmware/{fw_id}/file"), None, "firmware_not_found"),
        (Method::DELETE, format!("/api/v1/tokens/{token_id}"), None, "token_not_found"),
        (Method::PATCH, format!("/api/v1/users/{admin_id}"), Some(json!({"disabled": true})), "user_not_found"),
    ];
    for (method, path, body, code) in cases {
        let r = send(method.clone(), path.clone(), body).await.unwrap();
        let v = expect_status(r, StatusCode::NOT_FOUND).await;
        assert_eq!(v["code"], code, "{method} {path}");
    }
    // Uploads into, and file replacement of, the other tenant's resources.
    let r = s
        .client
        .post(s.url(&format!("/api/v1/products/{pk}/firmware")))
        .bearer_auth(&other)
        .multipart(form(&[("name", "x"), ("type", "wifi"), ("push_method", "V1V3")], Some(("fw.bin", image(2048, 2)))))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "product_not_found").await;
    let r = s
        .client
        .put(s.url(&format!("/api/v1/firmware/{fw_id}/file")))
        .bearer_auth(&other)
        .multipart(form(&[], Some(("fw.bin", image(2048, 3)))))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "firmware_not_found").await;
    // Lists show only the tenant's own.
    let lists = [("/api/v1/products", "total"), ("/api/v1/tokens", ""), ("/api/v1/users", "")];
    for (path, total_field) in lists {
        let v = expect_status(send(Method::GET, path.into(), None).await.unwrap(), StatusCode::OK).await;
        let seen =
            if total_field.is_empty() { v.as_array().unwrap().len() as i64 } else { v[total_field].as_i64().unwrap() };
        let own = if path == "/api/v1/users" { 1 } else { 0 };
        assert_eq!(seen, own, "{path}: {v}");
    }
    // The same product key cannot be taken by the other tenant either (devices name products by key alone).
    let r = send(Method::POST, "/api/v1/products".into(), Some(json!({"name": "x", "product_key": pk}))).await.unwrap();
    expect_error(r, StatusCode::CONFLICT, "product_key_taken").await;

    // Nothing changed for the owner.
    let v = expect_status(s.get(&format!("/api/v1/firmware/{fw_id}")).await, StatusCode::OK).await;
    assert_eq!(v["name"], "v1");
    let v = expect_status(s.get(&format!("/api/v1/products/{pk}")).await, StatusCode::OK).await;
    assert_eq!(v["name"], "acme lamp");
    let tokens = expect_status(s.get("/api/v1/tokens").await, StatusCode::OK).await;
    assert!(tokens[0]["revoked_at"].is_null());
}
