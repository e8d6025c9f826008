//! The scope × role × operation matrix: every operation of the OpenAPI document, called with
//! every kind of credentials, answers what the table in `proto-docs/api.md` says: the refusal
//! it implies, or (when allowed) a status the operation documents. The table, the document's
//! `security` requirements and the running server must agree.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(METHOD, path) → needs` from the table in `proto-docs/api.md`.
fn scope_table() -> BTreeMap<(String, String), String> {
    let doc = repo_file("proto-docs/api.md");
    let mut table = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(method), Some(path), Some(need)) = (cells.get(1), cells.get(2), cells.get(3)) else { continue };
        let (Some(method), Some(path)) = (
            method.strip_prefix('`').and_then(|m| m.strip_suffix('`')),
            path.strip_prefix('`').and_then(|p| p.strip_suffix('`')),
        ) else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) || !path.starts_with('/') {
            continue;
        }
        let previous = table.insert((method.to_string(), path.to_string()), need.to_string());
        assert!(previous.is_none(), "{method} {path} is twice in the table");
    }
    table
}

/// What the OpenAPI document says an operation needs, in the table's words.
fn documented_need(op: &Value) -> String {
    let Some(reqs) = op.get("security").and_then(Value::as_array) else { return "none".into() };
    let scopes = reqs.iter().find_map(|r| r.get("bearer")).and_then(Value::as_array).cloned().unwrap_or_default();
    match scopes.first().and_then(Value::as_str) {
        None => "any credentials".into(),
        Some("session") => "login session".into(),
        Some("installation_admin") => "installation admin".into(),
        Some(other) => other.to_owned(),
    }
}

/// One kind of caller.
struct Caller {
    name: &'static str,
    bearer: Option<String>,
    admin: bool,
    session: bool,
    scopes: &'static [&'static str],
    first_tenant: bool,
}

/// The refusal `need` implies for `caller`, if any: (status, code).
fn refusal(need: &str, c: &Caller) -> Option<(StatusCode, &'static str)> {
    if need == "none" {
        return None;
    }
    if c.bearer.is_none() {
        return Some((StatusCode::UNAUTHORIZED, "missing_credentials"));
    }
    let scope = |s: &str| (!c.scopes.contains(&s)).then_some((StatusCode::FORBIDDEN, "insufficient_scope"));
    match need {
        "any credentials" => None,
        "login session" => (!c.session).then_some((StatusCode::FORBIDDEN, "session_required")),
        "admin" | "installation admin" => {
            if !c.admin {
                return Some((StatusCode::FORBIDDEN, "admin_required"));
            }
            if let Some(r) = scope("admin") {
                return Some(r);
            }
            (need == "installation admin" && !c.first_tenant)
                .then_some((StatusCode::FORBIDDEN, "installation_admin_required"))
        }
        s @ ("read" | "write" | "push") => scope(s),
        other => panic!("unknown need `{other}` in proto-docs/api.md"),
    }
}

/// A concrete path for a template: ids and keys that exist nowhere, so an allowed call
/// changes nothing.
fn concrete(path: &str) -> String {
    path.replace("{id}", "999999")
        .replace("{request_id}", "999999")
        .replace("{product_key}", "ffffffffffffffffffffffffffffff00")
        .replace("{device}", "ZZZZZZZZZZZZZZZZZZZZZZ")
}

async fn token(s: &Session, bearer: &str, scopes: &[&str]) -> String {
    let r = s
        .client
        .post(s.url("/api/v1/tokens"))
        .bearer_auth(bearer)
        .json(&json!({ "name": format!("matrix-{}", scopes.join("-")), "scopes": scopes }))
        .send()
        .await
        .unwrap();
    expect_status(r, StatusCode::CREATED).await["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_operation_answers_every_caller_as_the_scope_table_says() {
    let s = Session::start().await;
    let served: Value =
        expect_status(s.client.get(s.url("/api-docs/openapi.json")).send().await.unwrap(), StatusCode::OK).await;

    // The table and the document list the same operations with the same needs.
    let table = scope_table();
    let mut documented = BTreeMap::new();
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()), documented_need(op));
        }
    }
    assert_eq!(table, documented, "proto-docs/api.md's scope table and the OpenAPI document disagree");

    // Callers: nobody, a member and an admin of the first tenant by session and by every
    // single-scope token, and an admin of a second tenant.
    let member_password = "member password 1";
    expect_status(
        s.post("/api/v1/users", json!({"username": "mia", "password": member_password, "role": "member"})).await,
        StatusCode::CREATED,
    )
    .await;
    let member = login(&s.client, &s.api, "mia", member_password).await;
    s.api.t.domain.create_admin("other", "olga", "olga password 1").await.unwrap();
    let other_admin = login(&s.client, &s.api, "olga", "olga password 1").await;
    let mut callers = vec![
        Caller { name: "nobody", bearer: None, admin: false, session: false, scopes: &[], first_tenant: false },
        Caller {
            name: "member session",
            bearer: Some(member.clone()),
            admin: false,
            session: true,
            scopes: &["read", "write", "push"],
            first_tenant: true,
        },
        Caller {
            name: "admin session",
            bearer: Some(s.token.clone()),
            admin: true,
            session: true,
            scopes: &["read", "write", "push", "admin"],
            first_tenant: true,
        },
        Caller {
            name: "second tenant's admin session",
            bearer: Some(other_admin),
            admin: true,
            session: true,
            scopes: &["read", "write", "push", "admin"],
            first_tenant: false,
        },
    ];
    const SINGLE: [&[&str]; 4] = [&["read"], &["write"], &["push"], &["admin"]];
    for scopes in SINGLE {
        callers.push(Caller {
            name: "admin token",
            bearer: Some(token(&s, &s.token, scopes).await),
            admin: true,
            session: false,
            scopes,
            first_tenant: true,
        });
        if scopes != ["admin"] {
            callers.push(Caller {
                name: "member token",
                bearer: Some(token(&s, &member, scopes).await),
                admin: false,
                session: false,
                scopes,
                first_tenant: true,
            });
        }
    }
    // A member cannot mint an admin token: its session lacks the scope.
    let r = s
        .client
        .post(s.url("/api/v1/tokens"))
        .bearer_auth(&member)
        .json(&json!({"name": "x", "scopes": ["admin"]}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;

    let mut checked = 0;
    for ((method, path), need) in &table {
        let op = &served["paths"][path][method.to_lowercase()];
        let documented: Vec<String> = op["responses"].as_object().unwrap().keys().cloned().collect();
        let body_type = op["requestBody"]["content"].as_object().and_then(|c| c.keys().next().cloned());
        for caller in &callers {
            let mut req = s.client.request(Method::from_bytes(method.as_bytes()).unwrap(), s.url(&concrete(path)));
            if let Some(bearer) = &caller.bearer {
                req = req.bearer_auth(bearer);
            }
            req = match body_type.as_deref() {
                Some("application/json") => req.json(&json!({})),
                Some(other) => req.header("content-type", other).body(""),
                None => req,
            };
            let r = req.send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let what = format!("{method} {path} as {} (scopes {:?})", caller.name, caller.scopes);
            match refusal(need, caller) {
                Some((want, code)) => {
                    assert_eq!((status, body["code"].as_str()), (want, Some(code)), "{what}: {body}");
                }
                None => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{what} was refused: {status} {body}"
                    );
                }
            }
            assert!(documented.contains(&status.as_str().to_owned()), "{what}: {status} is not documented ({body})");
            checked += 1;
        }
    }
    assert!(checked > 400, "{checked} calls");
}

#[tokio::test]
async fn a_read_token_cannot_manage_users_or_change_the_password() {
    let s = Session::start().await;
    let read = token(&s, &s.token, &["read"]).await;
    let as_read =
        |m: Method, path: &str, body: Value| s.client.request(m, s.url(path)).bearer_auth(&read).json(&body).send();
    let new_admin = json!({"username": "eve", "password": "eve password 1", "role": "admin"});
    let r = as_read(Method::POST, "/api/v1/users", new_admin.clone()).await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let r = as_read(Method::PATCH, "/api/v1/users/1", json!({"disabled": true})).await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let change = json!({"current_password": ADMIN_PASSWORD, "new_password": "a new password 1"});
    let r = as_read(Method::POST, "/api/v1/auth/password", change.clone()).await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "session_required").await;

    // An admin token may manage users, never the password; the session may do both.
    let admin = token(&s, &s.token, &["admin"]).await;
    let r = s.client.post(s.url("/api/v1/users")).bearer_auth(&admin).json(&new_admin).send().await.unwrap();
    expect_status(r, StatusCode::CREATED).await;
    let r = s.client.post(s.url("/api/v1/auth/password")).bearer_auth(&admin).json(&change).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "session_required").await;
    expect_status(s.post("/api/v1/auth/password", change).await, StatusCode::NO_CONTENT).await;
    // A demoted admin's admin token stops managing users at once.
    let eve = login(&s.client, &s.api, "eve", "eve password 1").await;
    let eve_admin = token(&s, &eve, &["admin"]).await;
    let me = login(&s.client, &s.api, ADMIN, "a new password 1").await;
    let list =
        expect_status(s.client.get(s.url("/api/v1/users")).bearer_auth(&me).send().await.unwrap(), StatusCode::OK)
            .await;
    let eve_id = list.as_array().unwrap().iter().find(|u| u["username"] == "eve").unwrap()["id"].as_i64().unwrap();
    let r = s
        .client
        .patch(s.url(&format!("/api/v1/users/{eve_id}")))
        .bearer_auth(&me)
        .json(&json!({"role": "member"}))
        .send()
        .await
        .unwrap();
    expect_status(r, StatusCode::OK).await;
    let r = s.client.get(s.url("/api/v1/users")).bearer_auth(&eve_admin).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    // An admin cannot lock themselves out.
    let r = s
        .client
        .patch(s.url("/api/v1/users/1"))
        .bearer_auth(&me)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    let v = expect_error(r, StatusCode::CONFLICT, "self_lockout").await;
    assert_eq!(v["details"]["field"], "disabled");
}
