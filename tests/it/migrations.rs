//! Both migration trees hold the same names, and each runs up → down → up.

use ota_domain::Db;
use ota_testkit::{TestDatabase, in_ci};

fn names(dir: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ota-domain/migrations").join(dir);
    let mut v: Vec<String> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn both_trees_have_the_same_migrations() {
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"));
    for name in &sqlite {
        for backend in ["sqlite", "postgres"] {
            for file in ["up.sql", "down.sql"] {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../crates/ota-domain/migrations")
                    .join(backend)
                    .join(name)
                    .join(file);
                assert!(path.is_file(), "{} is missing", path.display());
            }
        }
    }
}

fn round_trip(db: &TestDatabase) {
    let pool = Db::connect(&db.url, 2).unwrap();
    let applied = pool.migrate().unwrap();
    assert_eq!(applied.len(), names("sqlite").len());
    let reverted = pool.revert_all().unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(pool.migrate().unwrap(), applied);
    assert!(pool.migrate().unwrap().is_empty(), "a second run applies nothing");
}

#[test]
fn sqlite_migrations_go_up_down_up() {
    round_trip(&TestDatabase::sqlite());
}

#[test]
fn postgres_migrations_go_up_down_up() {
    match TestDatabase::postgres() {
        Ok(db) => round_trip(&db),
        Err(e) if !in_ci() => {
            eprintln!("SKIPPED postgres_migrations_go_up_down_up: PostgreSQL unreachable ({e}); CI runs it")
        }
        Err(e) => panic!("PostgreSQL unreachable in CI: {e}"),
    }
}

#[test]
fn unknown_scheme_is_a_clear_startup_error() {
    let err = Db::connect("mysql://root@127.0.0.1/test", 1).err().unwrap();
    assert!(err.to_string().contains("unsupported database URL scheme `mysql`"), "{err}");
}

#[test]
fn tests_run_on_the_backend_requested() {
    let db = TestDatabase::new();
    let pool = Db::connect(&db.url, 1).unwrap();
    let expected = match ota_testkit::TestBackend::from_env() {
        ota_testkit::TestBackend::Sqlite => ota_domain::Backend::Sqlite,
        ota_testkit::TestBackend::Postgres => ota_domain::Backend::Postgres,
    };
    assert_eq!(pool.backend(), expected);
}

/// Nodes started together (compose, several gateways) migrate the same fresh PostgreSQL at
/// once: one applies the migrations, the others wait for it and find nothing left to do.
#[test]
fn nodes_migrating_one_postgresql_at_once_all_start() {
    let db = match TestDatabase::postgres() {
        Ok(db) => db,
        Err(e) if !in_ci() => {
            eprintln!("SKIPPED nodes_migrating_one_postgresql_at_once_all_start: PostgreSQL unreachable ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL unreachable in CI: {e}"),
    };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (db.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let pool = Db::connect(&url, 1).unwrap();
                barrier.wait();
                pool.migrate().map(|applied| applied.len()).map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut applied: Vec<usize> = runs.into_iter().map(|r| r.join().unwrap().unwrap()).collect();
    applied.sort();
    assert_eq!(applied, vec![0, 0, 0, names("sqlite").len()]);
}
