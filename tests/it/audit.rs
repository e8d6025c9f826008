//! The audit log: what each operator action records (success and refusal, session and token,
//! the source address behind a trusted proxy), its filters and CSV export, who may read it.

use ota_domain::Clock;
use ota_testkit::{TestApi, TestDomain};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// Polls the audit log until it holds `n` entries (they are written just after each answer).
async fn entries(s: &Session, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let page = expect_status(s.get("/api/v1/audit?per_page=200").await, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n {
            assert_eq!(items.len(), n, "more entries than actions: {items:#?}");
            assert_eq!(page["total"], n as i64);
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the audit log never reached {n} entries");
}

fn find<'a>(items: &'a [Value], action: &str, status: u16) -> &'a Value {
    items
        .iter()
        .find(|e| e["action"] == action && e["status"] == status)
        .unwrap_or_else(|| panic!("no {action} {status} in {items:#?}"))
}

async fn query(s: &Session, q: &str) -> Vec<Value> {
    let page = expect_status(s.get(&format!("/api/v1/audit?{q}")).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_action_is_recorded_with_who_what_object_source_and_result() {
    let settings = ota_api::ApiSettings { trusted_proxies: vec!["127.0.0.1".parse().unwrap()], ..Default::default() };
    let api = TestApi::start_with(TestDomain::new(), settings);
    let mut s = Session::start_on(api).await;
    // The admin's own login above is entry 1.
    let started = s.api.t.clock.now();

    // A session: create a product (201, its key from the answer) and a user.
    let pk = s.create_product("lamp").await;
    let bob = expect_status(
        s.post("/api/v1/users", json!({"username": "bob", "password": "bob-password"})).await,
        StatusCode::CREATED,
    )
    .await;
    let bob_id = bob["id"].as_i64().unwrap();

    // Logins through the trusted proxy: a wrong password, an unknown user, a success.
    let login = |user: &str, password: &str, from: &str| {
        s.client
            .post(s.url("/api/v1/auth/login"))
            .header("X-Forwarded-For", format!("10.9.9.9, {from}"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    expect_error(
        login("bob", "wrong-password", "203.0.113.9").await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "login_failed",
    )
    .await;
    expect_error(
        login("mallory", "whatever-pass", "203.0.113.10").await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "login_failed",
    )
    .await;
    let bob_session = expect_status(login("bob", "bob-password", "198.51.100.7").await.unwrap(), StatusCode::OK).await;
    let bob_token = bob_session["token"].as_str().unwrap().to_owned();

    // Refused: a member creating a user (403), no credentials at all (401).
    let r = s
        .client
        .post(s.url("/api/v1/users"))
        .bearer_auth(&bob_token)
        .json(&json!({"username": "eve", "password": "eve-password"}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    let r = s.client.delete(s.url(&format!("/api/v1/products/{pk}"))).send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "missing_credentials").await;

    // Reads are not recorded.
    expect_status(s.get("/api/v1/products").await, StatusCode::OK).await;

    // An hour later, a token: a change that works and one on a missing product.
    s.api.t.clock.advance(chrono::Duration::hours(1));
    let later = s.api.t.clock.now();
    let admin_token = s.token.clone();
    let created = expect_status(
        s.post("/api/v1/tokens", json!({"name": "ci", "scopes": ["read", "write", "admin"]})).await,
        StatusCode::CREATED,
    )
    .await;
    let token_id = created["id"].as_i64().unwrap();
    s.token = created["secret"].as_str().unwrap().to_owned();
    expect_status(s.patch(&format!("/api/v1/products/{pk}"), json!({"name": "lamp 2"})).await, StatusCode::OK).await;
    expect_error(s.delete("/api/v1/products/nosuchproduct").await, StatusCode::NOT_FOUND, "product_not_found").await;

    let items = entries(&s, 11).await;
    // Newest first.
    let ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    let admin_login = items.iter().find(|e| e["action"] == "login" && e["username"] == ADMIN).unwrap();
    assert_eq!((admin_login["status"].as_u64(), admin_login["user_id"].as_i64()), (Some(200), Some(1)));
    let product = find(&items, "create_product", 201);
    assert_eq!(product["username"], ADMIN);
    assert_eq!(product["credential"], "session");
    assert_eq!(product["token_id"], Value::Null);
    assert_eq!(product["object_kind"], "product");
    assert_eq!(product["object_id"], pk.as_str());
    assert_eq!(product["route"], "POST /api/v1/products");
    assert_eq!(product["source"], "127.0.0.1", "no X-Forwarded-For: the peer");
    assert_eq!(product["error_code"], Value::Null);
    let user = find(&items, "create_user", 201);
    assert_eq!((user["object_kind"].as_str(), user["object_id"].as_str()), (Some("user"), Some(&*bob_id.to_string())));

    let failed: Vec<&Value> = items.iter().filter(|e| e["action"] == "login" && e["status"] == 401).collect();
    assert_eq!(failed.len(), 2);
    let bob_failed = failed.iter().find(|e| e["username"] == "bob").unwrap();
    assert_eq!(bob_failed["user_id"], bob_id);
    assert_eq!(bob_failed["error_code"], "login_failed");
    assert_eq!(bob_failed["source"], "203.0.113.9", "the trusted proxy's X-Forwarded-For");
    assert_eq!(bob_failed["credential"], Value::Null);
    let mallory = failed.iter().find(|e| e["username"] == "mallory").unwrap();
    assert_eq!(mallory["user_id"], Value::Null);
    assert_eq!(mallory["source"], "203.0.113.10");
    let bob_login = items.iter().find(|e| e["action"] == "login" && e["username"] == "bob" && e["status"] == 200);
    assert_eq!(bob_login.unwrap()["source"], "198.51.100.7");

    let refused = find(&items, "create_user", 403);
    assert_eq!(refused["username"], "bob");
    assert_eq!(refused["error_code"], "admin_required");
    let anonymous = find(&items, "delete_product", 401);
    assert_eq!(anonymous["username"], Value::Null);
    assert_eq!(anonymous["error_code"], "missing_credentials");
    assert_eq!((anonymous["object_kind"].as_str(), anonymous["object_id"].as_str()), (Some("product"), Some(&*pk)));
    assert!(!items.iter().any(|e| e["route"].as_str().unwrap().starts_with("GET ")));

    let token = find(&items, "create_token", 201);
    assert_eq!(
        (token["object_kind"].as_str(), token["object_id"].clone()),
        (Some("token"), json!(token_id.to_string()))
    );
    let update = find(&items, "update_product", 200);
    assert_eq!(update["credential"], "api_token");
    assert_eq!(update["token_id"], token_id);
    assert_eq!(update["username"], ADMIN);
    let missing = find(&items, "delete_product", 404);
    assert_eq!(missing["error_code"], "product_not_found");
    assert_eq!(missing["object_id"], "nosuchproduct");

    // Filters.
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).replace('+', "%2B");
    assert_eq!(query(&s, &format!("from={}", at(later))).await.len(), 3);
    assert_eq!(query(&s, &format!("from={}&to={}", at(started), at(later))).await.len(), 8);
    assert_eq!(query(&s, "username=bob").await.len(), 3);
    assert_eq!(query(&s, &format!("user_id={bob_id}")).await.len(), 3);
    assert_eq!(query(&s, "action=login").await.len(), 4);
    let on_product = query(&s, &format!("object_kind=product&object_id={pk}")).await;
    assert_eq!(on_product.len(), 3, "created, refused delete, updated");
    let paged = expect_status(s.get("/api/v1/audit?per_page=2&page=2").await, StatusCode::OK).await;
    assert_eq!(paged["items"].as_array().unwrap().len(), 2);
    assert_eq!(paged["total"], 11);
    assert!(query(&s, &format!("from={}&to={}", at(later), at(started))).await.is_empty(), "an empty range");
    expect_error(s.get("/api/v1/audit?per_page=500").await, StatusCode::BAD_REQUEST, "invalid_query").await;
    expect_error(s.get("/api/v1/audit.csv?per_page=0").await, StatusCode::BAD_REQUEST, "invalid_query").await;
    // A method the route lacks (405) reached no operation: not recorded.
    let r = s.client.delete(s.url("/api/v1/audit")).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // CSV: the same entries, same filters.
    let r = s.get("/api/v1/audit.csv").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], ota_domain::audit::CSV_HEADER.trim_end());
    assert_eq!(lines.len(), 12);
    assert!(
        lines.iter().any(|l| l.contains(",login,POST /api/v1/auth/login,,,203.0.113.9,401,login_failed")),
        "{text}"
    );
    let text = s.get("/api/v1/audit.csv?username=bob").await.text().await.unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let page = expect_status(s.get("/api/v1/audit").await, StatusCode::OK).await;
    assert_eq!(page["total"], 11, "the 405 and the reads left no entry");

    // Readable by tenant admins only.
    let r = s.client.get(s.url("/api/v1/audit")).bearer_auth(&bob_token).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    let r = s.client.get(s.url("/api/v1/audit.csv")).bearer_auth(&bob_token).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    let no_admin = expect_status(
        s.client
            .post(s.url("/api/v1/tokens"))
            .bearer_auth(&admin_token)
            .json(&json!({"name": "ro", "scopes": ["read"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let r =
        s.client.get(s.url("/api/v1/audit")).bearer_auth(no_admin["secret"].as_str().unwrap()).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
}

#[tokio::test]
async fn another_tenant_sees_only_its_own_entries() {
    let s = Session::start().await;
    s.create_product("lamp").await;
    s.api.t.domain.create_admin("globex", "g-admin", "globex-password").await.unwrap();
    let other_token = login(&s.client, &s.api, "g-admin", "globex-password").await;
    let r = s.client.post(s.url("/api/v1/auth/login")).json(&json!({"username": "nobody", "password": "x-password"}));
    expect_error(r.send().await.unwrap(), StatusCode::UNAUTHORIZED, "login_failed").await;
    // acme: its admin's login, the product, and (installation admin) the tenantless login.
    let items = entries(&s, 3).await;
    assert!(items.iter().all(|e| e["username"] != "g-admin"));
    let other = Session { api: s.api, client: s.client.clone(), token: other_token };
    let items = entries(&other, 1).await;
    assert_eq!(items[0]["username"], "g-admin");
    assert_eq!(items[0]["action"], "login");
}
