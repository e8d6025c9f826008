//! Reads that show several figures together (a page and its total, an adoption view's counts,
//! a rule's counts by stage) take them from one snapshot of the database, so they agree with
//! each other while writers go on. Before, a page of three audit entries could say `total: 2`.

use diesel::prelude::*;
use ota_domain::schema::users;
use ota_testkit::TestDomain;

/// Counts the users twice on one connection, with another tenant's admin created and committed
/// on another connection in between.
async fn count_around_a_commit(t: &TestDomain, snapshot: bool, tenant: &'static str) -> (i64, i64) {
    let domain = t.domain.clone();
    let handle = tokio::runtime::Handle::current();
    let reads = move |c: &mut ota_domain::db::DbConn| {
        let first: i64 = users::table.count().get_result(c)?;
        handle.block_on(domain.create_admin(tenant, &format!("{tenant}-admin"), "admin-password"))?;
        let second: i64 = users::table.count().get_result(c)?;
        Ok((first, second))
    };
    let db = &t.domain.db;
    if snapshot { db.snapshot(reads).await.unwrap() } else { db.run(reads).await.unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_sees_nothing_committed_after_its_first_query() {
    let t = TestDomain::new();
    t.domain.create_admin("acme", "admin", "admin-password").await.unwrap();
    // Without a snapshot, the second query sees the commit: the disagreement this prevents.
    assert_eq!(count_around_a_commit(&t, false, "globex").await, (1, 2));
    // In a snapshot, both queries see the database as it was at the first.
    assert_eq!(count_around_a_commit(&t, true, "initech").await, (2, 2));
    // The commit made during the snapshot is there for the next read.
    let after: i64 = t.domain.db.run(|c| Ok(users::table.count().get_result(c)?)).await.unwrap();
    assert_eq!(after, 3);
}
