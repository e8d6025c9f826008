//! Batched writers lock the device rows they will update in one order, ascending id, whatever
//! order their batch lists them in (`ota_domain::devices::locks`). Two batches over the same
//! devices then wait for each other; before, a check batch and a presence batch that met the
//! same devices in opposite orders deadlocked on PostgreSQL, and each deadlock cost the check
//! batch a second (seen in a 100,000-device boot: checks past the 30 s handler timeout).

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use ota_domain::db::DbConn;
use ota_domain::devices::locks::lock_in_order;
use ota_testkit::{TestBackend, TestDatabase, TestDomain};

fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::establish(&db.url).expect("connect to the test schema")
}

/// Whether another transaction holds the row lock of device `id` now.
fn locked(c: &mut PgConnection, id: i64) -> bool {
    c.transaction(|c| diesel::sql_query(format!("SELECT id FROM devices WHERE id = {id} FOR UPDATE NOWAIT")).execute(c))
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_its_device_locks_in_id_order_whatever_its_order() {
    let t = TestDomain::new();
    if t.db.backend != TestBackend::Postgres {
        eprintln!(
            "locks: row locks are PostgreSQL's (SQLite runs one write at a time); run with OTA_TEST_DATABASE=postgres"
        );
        return;
    }
    let mut setup = connect(&t.db);
    setup
        .batch_execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (901, 'locks', 0);
             INSERT INTO products (id, tenant_id, product_key, product_secret, name, created_at)
               VALUES (901, 901, 'locks', 'secret', 'locks', 0);",
        )
        .expect("a tenant and a product");
    for (id, did) in [(9001, "lockdevice1"), (9002, "lockdevice2")] {
        diesel::sql_query(format!(
            "INSERT INTO devices (id, tenant_id, product_id, did, mac, registered_via, created_at, updated_at)
             VALUES ({id}, 901, 901, '{did}', '{did}', 'http', 0, 0)"
        ))
        .execute(&mut setup)
        .expect("a device");
    }

    // Another writer holds the higher row, mid-batch.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let mut holder = connect(&t.db);
    let holding = std::thread::spawn(move || {
        holder
            .transaction(|c| {
                diesel::sql_query("UPDATE devices SET last_seen_at = 1 WHERE id = 9002").execute(c)?;
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, diesel::result::Error>(())
            })
            .expect("the holder commits");
    });
    held_rx.recv().unwrap();

    // A batch that lists the higher device first.
    let mut batch = DbConn::Pg(connect(&t.db));
    let batching = std::thread::spawn(move || {
        batch.transaction(|c| lock_in_order(c, &["lockdevice2", "lockdevice1"], &[], None)).map(|_| ())
    });

    // It takes the lower row first, then waits for the higher one: never the other way round,
    // which is what let two batches deadlock.
    let mut probe = connect(&t.db);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !locked(&mut probe, 9001) {
        assert!(Instant::now() < deadline, "the batch never locked the lower row while the higher one was held");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!batching.is_finished(), "the batch must wait for the higher row");
    release_tx.send(()).unwrap();
    holding.join().unwrap();
    batching.join().unwrap().expect("the batch takes both rows once the holder commits");
    assert!(!locked(&mut probe, 9001) && !locked(&mut probe, 9002), "both locks end with the batch");
}
