//! Password hashing cannot be turned against the server: bounded concurrency, counts before
//! hashing, counters shared by API nodes, per (user, address) so a flood never locks the
//! right password out from another address. Memory and latency figures are the README's
//! benchmark (`ota-bench login-flood`), not assertions here.

use std::net::{IpAddr, Ipv4Addr};

use ota_testkit::{TestApi, TestDomain};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

fn client_from(last: u8) -> Client {
    Client::builder().local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).build().unwrap()
}

/// Status, code and `Retry-After` of a login.
async fn attempt(client: &Client, api: &str, user: &str, password: &str) -> (StatusCode, String, Option<String>) {
    let r = client
        .post(format!("{api}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or("").to_owned(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_is_bounded_and_the_admin_still_logs_in_from_another_address() {
    let mut t = TestDomain::new();
    t.adjust(|s| {
        // One slot: the bound is as visible as with several, and the rest of the suite keeps a core.
        s.password_hash_slots = 1;
        s.password_queue_deadline_ms = 5000;
    });
    let api = TestApi::start_with(t, ota_api::ApiSettings::default());
    let domain = api.t.domain.clone();
    let mut names = vec![ADMIN.to_owned()];
    domain.create_admin("acme", ADMIN, ADMIN_PASSWORD).await.unwrap();
    for i in 1..20 {
        let name = format!("user{i:02}");
        domain.create_admin("acme", &name, "some password 1").await.unwrap();
        names.push(name);
    }
    // 600 wrong logins at once from 40 addresses against the 20 user names, and in the middle
    // of them the admin's right password from an address that took no part. The queue
    // deadline is long (5 s) so that the admin's turn comes well within it even on a loaded
    // machine: it waits behind one hash per flooding address, not behind the flood.
    let clients: Vec<Client> = (10..50).map(client_from).collect();
    let flood = futures_util::future::join_all((0..600).map(|i| {
        let client = clients[i % 40].clone();
        let user = names[(i / 40 + i) % 20].clone();
        let base = api.base.clone();
        async move { attempt(&client, &base, &user, "wrong password 1").await }
    }));
    let admin = async {
        tokio::task::yield_now().await;
        attempt(&client_from(200), &api.base, ADMIN, ADMIN_PASSWORD).await
    };
    let (answers, admin) = tokio::join!(flood, admin);
    assert_eq!((admin.0, admin.1.as_str()), (StatusCode::OK, ""), "the admin from another address: {admin:?}");

    let mut by_code = std::collections::BTreeMap::new();
    for (status, code, retry) in &answers {
        match (status.as_u16(), code.as_str()) {
            (401, "login_failed") => {}
            (429, "too_many_login_attempts") | (503, "password_checks_busy") => {
                assert!(retry.as_deref().is_some_and(|r| r.parse::<u32>().is_ok_and(|s| s >= 1)), "{retry:?}")
            }
            other => panic!("unexpected answer to a flood login: {other:?}"),
        }
        *by_code.entry(code.clone()).or_insert(0) += 1;
    }
    // 400 hashes (10 per address are free) one at a time would outlast the deadline: the queue
    // was cut, never grown.
    assert!(by_code.get("password_checks_busy").copied().unwrap_or(0) > 0, "{by_code:?}");
    let gate = domain.hash_gate.stats();
    assert_eq!((gate.slots, gate.peak_running), (1, 1), "{gate:?}");
    // Every address is over its count now; the admin's own address is not.
    let (status, code, _) = attempt(&clients[0], &api.base, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "too_many_login_attempts"));
    assert_eq!(attempt(&client_from(200), &api.base, ADMIN, ADMIN_PASSWORD).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_before_hashing_and_shared_by_api_nodes() {
    let s = Session::start().await;
    let other_node = s.api.sibling();
    // 30 wrong passwords at once from one address: only the free five are hashed.
    let from = client_from(40);
    let answers =
        futures_util::future::join_all((0..30).map(|_| attempt(&from, &s.api.base, ADMIN, "wrong password 1"))).await;
    let failed = answers.iter().filter(|a| a.1 == "login_failed").count();
    let throttled = answers.iter().filter(|a| a.1 == "too_many_login_attempts").count();
    assert_eq!((failed, throttled), (5, 25), "{answers:?}");
    // The other API node knows: the same user from the same address waits there too…
    let (status, code, retry) = attempt(&from, &other_node.base, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(
        (status, code.as_str(), retry.as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_login_attempts", Some("1"))
    );
    // …while the admin from another address is let in by either node.
    assert_eq!(attempt(&client_from(41), &other_node.base, ADMIN, ADMIN_PASSWORD).await.0, StatusCode::OK);
    // After the wait, the right password from the throttled address works and clears its count.
    s.api.t.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(attempt(&from, &s.api.base, ADMIN, ADMIN_PASSWORD).await.0, StatusCode::OK);
    assert_eq!(attempt(&from, &s.api.base, ADMIN, "wrong password 1").await.1, "login_failed");
    // The maintenance task forgets counters quiet for 15 minutes, and only those.
    assert_eq!(s.api.t.domain.forget_login_failures().await.unwrap(), 0);
    s.api.t.clock.advance(chrono::Duration::minutes(15));
    assert!(s.api.t.domain.forget_login_failures().await.unwrap() >= 2);
}
