use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn credentials_failures_each_have_their_code() {
    let s = Session::start().await;
    let r = s.client.get(s.url("/api/v1/products")).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "missing_credentials").await;
    for header in ["Basic abc", "Bearer ", "Bearer not.a.jwt", "Bearer ota_0000000000000000000000000000000000000000"] {
        let r = s.client.get(s.url("/api/v1/products")).header("Authorization", header).send().await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // A JWT signed with another secret.
    let forged = ota_api::JwtKeys::new(b"another-secret", chrono::Duration::hours(1))
        .issue(1, ota_domain::Clock::now(&s.api.t.clock))
        .unwrap()
        .0;
    let r = s.client.get(s.url("/api/v1/products")).bearer_auth(forged).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    // Expiry follows the server's clock.
    expect_status(s.get("/api/v1/auth/me").await, StatusCode::OK).await;
    s.api.t.clock.advance(chrono::Duration::hours(13));
    expect_error(s.get("/api/v1/auth/me").await, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn login_failures_are_counted_and_slowed_down() {
    let s = Session::start().await;
    let bad = || {
        s.client
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": ADMIN, "password": "wrong password"}))
            .send()
    };
    for _ in 0..5 {
        expect_error(bad().await.unwrap(), StatusCode::UNAUTHORIZED, "login_failed").await;
    }
    let r = bad().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let v = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_login_attempts").await;
    assert_eq!(v["details"]["retry_after_seconds"], 1);
    // Even the right password waits its turn.
    let good = json!({"username": ADMIN, "password": ADMIN_PASSWORD});
    let r = s.client.post(s.url("/api/v1/auth/login")).json(&good).send().await.unwrap();
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_login_attempts").await;
    s.api.t.clock.advance(chrono::Duration::seconds(2));
    let r = s.client.post(s.url("/api/v1/auth/login")).json(&good).send().await.unwrap();
    expect_status(r, StatusCode::OK).await;
    // Unknown users fail the same way as wrong passwords.
    let r = s
        .client
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "nobody", "password": "whatever1"}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "login_failed").await;
    let r = s
        .client
        .post(s.url("/api/v1/auth/login"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
}

#[tokio::test]
async fn api_tokens_carry_scopes_and_can_be_revoked() {
    let s = Session::start().await;
    let r = s.post("/api/v1/tokens", json!({"name": "ci", "scopes": ["read"]})).await;
    let created = expect_status(r, StatusCode::CREATED).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ota_"));
    let id = created["id"].as_i64().unwrap();

    let as_token = |path: &str| s.client.get(s.url(path)).bearer_auth(&secret).send();
    let me = expect_status(as_token("/api/v1/auth/me").await.unwrap(), StatusCode::OK).await;
    assert_eq!(me["credential"], "api_token");
    assert_eq!(me["scopes"], json!(["read"]));
    expect_status(as_token("/api/v1/products").await.unwrap(), StatusCode::OK).await;
    let r =
        s.client.post(s.url("/api/v1/products")).bearer_auth(&secret).json(&json!({"name": "x"})).send().await.unwrap();
    let v = expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(v["details"]["required_scope"], "write");

    // The list never shows secrets.
    let list = expect_status(s.get("/api/v1/tokens").await, StatusCode::OK).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("secret").is_none());
    assert!(!list.to_string().contains(&secret));

    for bad in [
        json!({"name": "", "scopes": ["read"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "x", "scopes": ["read"], "expires_in_days": 0}),
    ] {
        let r = s.post("/api/v1/tokens", bad.clone()).await;
        let status = r.status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // A write token cannot mint a push token.
    let w = expect_status(
        s.post("/api/v1/tokens", json!({"name": "w", "scopes": ["read", "write"]})).await,
        StatusCode::CREATED,
    )
    .await;
    let r = s
        .client
        .post(s.url("/api/v1/tokens"))
        .bearer_auth(w["secret"].as_str().unwrap())
        .json(&json!({"name": "p", "scopes": ["push"]}))
        .send()
        .await
        .unwrap();
    let v = expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(v["details"]["required_scope"], "push");

    let revoked = expect_status(s.delete(&format!("/api/v1/tokens/{id}")).await, StatusCode::OK).await;
    assert!(revoked["revoked_at"].is_string());
    expect_error(as_token("/api/v1/products").await.unwrap(), StatusCode::UNAUTHORIZED, "token_revoked").await;
    expect_error(s.delete("/api/v1/tokens/999999").await, StatusCode::NOT_FOUND, "token_not_found").await;

    // Expiring tokens follow the clock.
    let e = expect_status(
        s.post("/api/v1/tokens", json!({"name": "e", "scopes": ["read"], "expires_in_days": 1})).await,
        StatusCode::CREATED,
    )
    .await;
    let secret = e["secret"].as_str().unwrap();
    expect_status(s.client.get(s.url("/api/v1/products")).bearer_auth(secret).send().await.unwrap(), StatusCode::OK)
        .await;
    s.api.t.clock.advance(chrono::Duration::days(1));
    let r = s.client.get(s.url("/api/v1/products")).bearer_auth(secret).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn admins_manage_users_and_disabled_users_are_locked_out() {
    let s = Session::start().await;
    let r = s.post("/api/v1/users", json!({"username": "bob", "password": "bob-password"})).await;
    let bob = expect_status(r, StatusCode::CREATED).await;
    assert_eq!(bob["role"], "member");
    expect_error(
        s.post("/api/v1/users", json!({"username": "bob", "password": "bob-password"})).await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;
    expect_error(
        s.post("/api/v1/users", json!({"username": "b b", "password": "bob-password"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    expect_error(
        s.post("/api/v1/users", json!({"username": "carl", "password": "short"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    let users = expect_status(s.get("/api/v1/users").await, StatusCode::OK).await;
    assert_eq!(users.as_array().unwrap().len(), 2);

    let bob_token = login(&s.client, &s.api, "bob", "bob-password").await;
    let r = s.client.get(s.url("/api/v1/users")).bearer_auth(&bob_token).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    let r = s.client.get(s.url("/api/v1/products")).bearer_auth(&bob_token).send().await.unwrap();
    expect_status(r, StatusCode::OK).await;

    // Bob changes his password: old sessions end, the new password works.
    s.api.t.clock.advance(chrono::Duration::seconds(1));
    let change = |cur: &str, new: &str| {
        s.client
            .post(s.url("/api/v1/auth/password"))
            .bearer_auth(&bob_token)
            .json(&json!({"current_password": cur, "new_password": new}))
            .send()
    };
    expect_error(change("wrong-password", "bob-password-2").await.unwrap(), StatusCode::FORBIDDEN, "wrong_password")
        .await;
    expect_error(change("bob-password", "2short").await.unwrap(), StatusCode::BAD_REQUEST, "invalid_field").await;
    expect_status(change("bob-password", "bob-password-2").await.unwrap(), StatusCode::NO_CONTENT).await;
    let r = s.client.get(s.url("/api/v1/products")).bearer_auth(&bob_token).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "token_expired").await;
    s.api.t.clock.advance(chrono::Duration::seconds(1));
    let bob_token = login(&s.client, &s.api, "bob", "bob-password-2").await;

    let id = bob["id"].as_i64().unwrap();
    let v =
        expect_status(s.patch(&format!("/api/v1/users/{id}"), json!({"disabled": true})).await, StatusCode::OK).await;
    assert_eq!(v["disabled"], true);
    let r = s.client.get(s.url("/api/v1/products")).bearer_auth(&bob_token).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "user_disabled").await;
    let r = s
        .client
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "bob", "password": "bob-password-2"}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "user_disabled").await;
    expect_error(
        s.patch("/api/v1/users/99999", json!({"disabled": true})).await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    )
    .await;
    let me = expect_status(s.get("/api/v1/auth/me").await, StatusCode::OK).await;
    let r = s.patch(&format!("/api/v1/users/{}", me["user_id"]), json!({"disabled": true})).await;
    expect_error(r, StatusCode::CONFLICT, "self_lockout").await;
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let t = ota_testkit::TestDomain::new();
    let settings =
        ota_api::ApiSettings { cors_allowed_origins: vec!["https://console.example".into()], ..Default::default() };
    let api = ota_testkit::TestApi::start_with(t, settings);
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, api.url("/api/v1/products"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let r = preflight("https://console.example").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://console.example");
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A browser frontend may read the request id (to quote it in a report) and send its own.
    let r = client
        .get(api.url("/healthz"))
        .header("Origin", "https://console.example")
        .header("X-Request-Id", "console-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "console-7");
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let r = client
        .request(reqwest::Method::OPTIONS, api.url("/api/v1/products"))
        .header("Origin", "https://console.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "x-request-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://console.example");
}
