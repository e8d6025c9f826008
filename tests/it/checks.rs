//! Device checks read first and write in batches
//! (`proto-docs/lifecycle.md#device-checks-reads-first-writes-in-batches`): a check that
//! changes nothing opens no transaction and runs only cached statements; a check whose
//! answer depends on a write is answered after that write is committed, so a crash right
//! after the answer loses nothing the device was told.

use std::time::Instant;

use ota_domain::Db;
use ota_domain::upgrades::{Check, CheckAuth};
use ota_wire::dto::{FirmwareType, PushMethod};
use reqwest::StatusCode;
use serde_json::json;

use crate::rules::{Dev, Fleet, HW, rule_body};
use crate::support::*;

fn check(dev: &Dev, sw: &str) -> Check {
    Check {
        did: dev.did.clone(),
        auth: CheckAuth::Passcode(dev.passcode.clone()),
        method: PushMethod::V41,
        fw_type: FirmwareType::Wifi,
        hard: Some(HW.to_owned()),
        soft: Some(sw.to_owned()),
        fid: None,
        ip: None,
        node: Some("gw-a".into()),
    }
}

/// A rule for every device on `old`, started, inside its window (the fake clock's day).
async fn pushing_rule(f: &Fleet, old: &str, new: &str) -> i64 {
    let fw = f.firmware(new, true).await;
    let body = rule_body(json!({ "target": "all" }), &[old], ("2026-01-01", "2026-01-03"), (0, 23));
    let id = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    fw
}

/// A device's stored Wi-Fi version and last-seen time.
async fn device_row(db: &Db, did: &str) -> (Option<String>, Option<i64>) {
    use diesel::prelude::*;
    use ota_domain::schema::devices;
    let did = did.to_owned();
    db.run(move |c| {
        Ok(devices::table.filter(devices::did.eq(&did)).select((devices::wifi_sw, devices::last_seen_at)).first::<(
            Option<String>,
            Option<i64>,
        )>(
            c
        )?)
    })
    .await
    .unwrap()
}

/// The stage and serving node of a record, read through `db` (a pool of its own: what a
/// process started after a crash would read).
async fn stage_in(db: &Db, upgrade_id: i64) -> (String, Option<String>) {
    use diesel::prelude::*;
    use ota_domain::schema::upgrades;
    db.run(move |c| {
        Ok(upgrades::table
            .find(upgrade_id)
            .select((upgrades::stage, upgrades::download_node))
            .first::<(String, Option<String>)>(c)?)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_changes_nothing_opens_no_transaction_and_prepares_nothing() {
    let f = Fleet::start().await;
    let d = f.device("5CCF7F300001", "04020006", false).await;
    let db = f.domain().db.clone();
    // Warm every pooled connection's statement cache the way the gateway's traffic would.
    let warm: Vec<_> = (0..32).map(|_| f.domain().device_check(check(&d, "04020006"))).collect();
    for answer in futures_util::future::join_all(warm).await {
        assert!(answer.unwrap().is_err(), "nothing to offer");
    }
    f.domain().flush_checks().await;

    const N: u64 = 100;
    let before = db.count();
    db.trace_statements();
    let started = Instant::now();
    for _ in 0..N {
        assert!(f.domain().device_check(check(&d, "04020006")).await.unwrap().is_err());
    }
    let elapsed = started.elapsed();
    let traced = db.traced_statements();
    let after = db.count();

    // No check opened a transaction: only the last-seen batches did (at most one per
    // 100 ms linger, however many checks they carry).
    let batches = after.transactions - before.transactions;
    let lingers = elapsed.as_millis() as u64 / 100 + 1;
    assert!(batches <= lingers, "{batches} transactions for {N} unchanged checks in {elapsed:?}");
    // A few indexed reads per check (device, pushing rules, open records; the boot track on
    // V4.1), each a statement prepared once per connection and served from its cache since.
    // (A last-seen batch locks its rows first, on PostgreSQL: a SELECT, but the batch's.)
    let reads: Vec<&(String, bool)> = traced
        .iter()
        .filter(|(sql, _)| sql.starts_with("SELECT") && sql.trim() != "SELECT 1" && !sql.contains("FOR NO KEY UPDATE"))
        .collect();
    assert!((2 * N..=4 * N).contains(&(reads.len() as u64)), "{} reads for {N} checks", reads.len());
    let uncached: Vec<&String> = reads.iter().filter(|(_, hit)| !hit).map(|(sql, _)| sql).collect();
    assert!(uncached.is_empty(), "statements not from a statement cache: {uncached:#?}");
    assert!(after.prepared - before.prepared <= 8 * 4, "statements prepared again");

    // The last-seen time is written by a batch (here: on flush).
    f.s.api.t.clock.advance(chrono::Duration::seconds(30));
    let now = f.domain().clock.now_ms();
    assert!(f.domain().device_check(check(&d, "04020006")).await.unwrap().is_err());
    f.domain().flush_checks().await;
    assert_eq!(device_row(&db, &d.did).await.1, Some(now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_changes_state_is_written_before_its_answer() {
    let f = Fleet::start().await;
    let d = f.device("5CCF7F300002", "04020006", true).await;
    f.device("5CCF7F300003", "04020006", true).await;
    let db = f.domain().db.clone();
    // A new version is stored before the answer: the next read sees it at once.
    let before = db.count();
    assert!(f.domain().device_check(check(&d, "04020007")).await.unwrap().is_err());
    assert!(db.count().transactions > before.transactions, "a changed version is written");
    assert_eq!(device_row(&db, &d.did).await.0.as_deref(), Some("04020007"));
    // Back on the rule's old version: the check joins the rule, is offered the image, and the
    // record is `checked` by this node when the answer arrives.
    let fw = pushing_rule(&f, "04020006", "04020021").await;
    let offer = f.domain().device_check(check(&d, "04020006")).await.unwrap().expect("an offer");
    assert_eq!(offer.firmware.id, fw);
    let reopened = Db::connect(&f.s.api.t.db.url, 2).unwrap();
    assert_eq!(stage_in(&reopened, offer.upgrade_id).await, ("checked".to_owned(), Some("gw-a".to_owned())));
}

/// A crash right after the answers: the writer stops without writing anything more, as
/// under `kill -9`. Every offer a device was told about is `checked` in the database read
/// afresh; what is lost is only last-seen times, which the next check writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_answers_loses_nothing_a_device_was_told() {
    let f = Fleet::start().await;
    let mut devs = Vec::new();
    for i in 0..40 {
        devs.push(f.device(&format!("5CCF7F31{i:04X}"), "04020006", true).await);
    }
    let quiet = f.device("5CCF7F31FFFF", "04020099", true).await;
    f.domain().flush_checks().await;
    let fw = pushing_rule(&f, "04020006", "04020021").await;
    f.s.api.t.clock.advance(chrono::Duration::seconds(5));

    // Forty checks at once, each joining the rule and offered the image, plus a device
    // with nothing to do; the writer is killed as soon as the last answer is in.
    let calls: Vec<_> = devs.iter().map(|d| f.domain().device_check(check(d, "04020006"))).collect();
    let (answers, quiet_answer) =
        tokio::join!(futures_util::future::join_all(calls), f.domain().device_check(check(&quiet, "04020099")));
    f.domain().check_writer().kill();
    assert!(quiet_answer.unwrap().is_err());
    let offers: Vec<i64> = answers
        .into_iter()
        .map(|a| {
            let offer = a.unwrap().expect("an offer");
            assert_eq!(offer.firmware.id, fw);
            offer.upgrade_id
        })
        .collect();

    let reopened = Db::connect(&f.s.api.t.db.url, 2).unwrap();
    for id in &offers {
        assert_eq!(stage_in(&reopened, *id).await, ("checked".to_owned(), Some("gw-a".to_owned())), "record {id}");
    }
    // After the "restart" (a new writer): a check of a device whose last-seen time died with
    // the writer writes it again; the offered devices are offered the same records.
    f.s.api.t.clock.advance(chrono::Duration::seconds(1));
    let old = f.domain();
    let t = ota_domain::Domain::new(old.db.clone(), old.clock.clone(), old.store.clone(), (*old.settings).clone());
    let again = t.device_check(check(&devs[0], "04020006")).await.unwrap().expect("the same offer");
    assert_eq!(again.upgrade_id, offers[0]);
    assert!(t.device_check(check(&quiet, "04020099")).await.unwrap().is_err());
    t.flush_checks().await;
    assert_eq!(device_row(&reopened, &quiet.did).await.1, Some(t.clock.now_ms()));
}
