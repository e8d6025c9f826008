//! The README's pipeline example ("`ota` in pipelines"), run as written against a running
//! `ota up` and a simulated fleet: it uploads, verifies on a simulated device, creates, starts
//! and watches a rule to completion; run again it changes nothing; and a refused step exits
//! non-zero with the server's error code. Runs on the backend `OTA_TEST_DATABASE` selects.

mod common;

use std::time::Duration;

use common::{Env, OTA, image, login, readme_pipeline_runs_twice, text};
use ota_sim::Timing;
use ota_testkit::cluster::{ADMIN, Api, ClusterConfig, Node, PASSWORD, device};
use serde_json::Value;

/// A running `ota up`, a logged-in client environment, and four simulated V4.1 devices on
/// 04020006 (the first is the test device).
struct Setup {
    env: Env,
    devices: Vec<ota_sim::DeviceHandle>,
    macs: Vec<String>,
    _node: Node,
    _dir: tempfile::TempDir,
    _db: ota_testkit::TestDatabase,
}

async fn setup() -> Setup {
    let db = ota_testkit::TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        ota: OTA.into(),
        timing: Timing::fast(),
        database_url: db.url.clone(),
        broker: "embedded".into(),
        lease_secs: 3,
        delivery_secs: 2,
        push_rate: 50,
        dir: dir.path().to_owned(),
        store_env: Vec::new(),
        node_env: Vec::new(),
    };
    let node = Node::start(&config, "n1");
    let work = dir.path().join("job");
    std::fs::create_dir_all(&work).unwrap();

    // `ota login` with a user name: the password from standard input, an API token stored 0600.
    let token = login(&node.api_url(), &dir.path().join("config"), ADMIN, PASSWORD);

    let mut env = Env { dir: work.clone(), url: node.api_url(), token, pk: String::new(), test_mac: String::new() };
    let product = env.ota_json(&["products", "create", "--name", "lamp"]);
    env.pk = product["product_key"].as_str().unwrap().to_owned();

    let macs: Vec<String> = (1..=4).map(|i| format!("5CCF7F{:06X}", 0xA000 + i)).collect();
    env.test_mac = macs[0].clone();
    let devices: Vec<_> = macs.iter().map(|mac| device(&node, &env.pk, mac, &config.timing)).collect();
    let api = Api::login(&[&node]).await;
    api.wait(
        &format!("/api/v1/products/{}/devices?online=true&per_page=1", env.pk),
        "all online",
        Duration::from_secs(60),
        |v| v["total"].as_u64() == Some(macs.len() as u64),
    )
    .await;
    Setup { env, devices, macs, _node: node, _dir: dir, _db: db }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pipeline_runs_twice_changing_nothing_the_second_time() {
    let Setup { env, devices, macs: _, _node, _dir, _db } = setup().await;
    let work = env.dir.clone();
    readme_pipeline_runs_twice(&env, 3);

    // A refused step: a rule of unverified firmware cannot start. Exit 5 and the code printed.
    std::fs::write(work.join("GAgent_00ESP826_04020022_26120200.bin"), image(64 * 1024, 2)).unwrap();
    let refused = env.script(
        "set -eu\n\
         FW2=$(ota firmware upload \"$PK\" GAgent_00ESP826_04020022_26120200.bin --push-method V4.1 --quiet)\n\
         RULE2=$(ota rules create \"$FW2\" --name unverified --old-version 04020021 --quiet)\n\
         ota rules start \"$RULE2\"\n\
         echo not reached",
    );
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("error[firmware_not_verified] (HTTP 409)"), "{}", text(&refused.stderr));
    assert!(!text(&refused.stdout).contains("not reached"));
    let rule2 = env.ota_json(&["rules", "list", "--product-key", &env.pk])["items"][0]["request_id"].as_i64().unwrap();
    let json = env.ota(&["rules", "start", &rule2.to_string(), "--json"]);
    assert_eq!(json.status.code(), Some(5));
    let error: Value = serde_json::from_slice(&json.stderr).unwrap();
    assert_eq!(error["error"]["code"], "firmware_not_verified");
    assert_eq!(error["error"]["exit_code"], 5);

    // Other classes: a rule that does not exist (4), bad credentials (3), no server (7).
    assert_eq!(env.ota(&["rules", "show", "999999"]).status.code(), Some(4));
    assert_eq!(env.ota(&["rules", "show", "1", "--token", "ota_wrong"]).status.code(), Some(3));
    assert_eq!(env.ota(&["rules", "show", "1", "--url", "http://127.0.0.1:9"]).status.code(), Some(7));

    for d in devices {
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_commands_products_devices_firmware_and_rollout_control() {
    let Setup { env, devices, macs, _node, _dir, _db } = setup().await;
    let pk = env.pk.clone();

    // Products: list, show, and a create rerun with the key.
    let list = env.ota_json(&["products", "list", "--all"]);
    assert_eq!(list["items"][0]["product_key"], pk.as_str());
    assert_eq!(text(&env.ota(&["products", "show", &pk, "--quiet"]).stdout).trim(), pk);
    let again = env.ota(&["products", "create", "--name", "lamp", "--product-key", &pk]);
    assert!(again.status.success() && text(&again.stdout).contains("already there"), "{}", text(&again.stderr));
    let other = env.ota(&["products", "create", "--name", "other", "--product-key", &pk]);
    assert_eq!(other.status.code(), Some(5), "{}", text(&other.stderr));

    // Devices: an import, its rerun (the first report), the list.
    std::fs::write(env.dir.join("devices.csv"), "mac\n5CCF7F00B001\n5CCF7F00B002\n").unwrap();
    let report = env.ota_json(&["devices", "import", &pk, "devices.csv"]);
    assert_eq!(report["added"], 2, "{report}");
    let rerun = env.ota(&["devices", "import", &pk, "devices.csv"]);
    assert!(text(&rerun.stdout).contains("2 added") && text(&rerun.stdout).contains("already imported"));
    let all = env.ota_json(&["devices", "list", &pk, "--all", "--per-page", "2"]);
    assert_eq!((all["total"].as_i64(), all["items"].as_array().map(Vec::len)), (Some(6), Some(6)), "{all}");
    let online = env.ota_json(&["devices", "list", &pk, "--online", "true"]);
    assert_eq!(online["total"], 4);

    // Firmware: upload, show, download (checked), delete of an unused one.
    let bytes = image(4096, 9);
    std::fs::write(env.dir.join("GAgent_00ESP826_04020021_26120100.bin"), &bytes).unwrap();
    let fw =
        env.ota_json(&["firmware", "upload", &pk, "GAgent_00ESP826_04020021_26120100.bin", "--push-method", "V4.1"]);
    let id = fw["id"].as_i64().unwrap().to_string();
    assert_eq!(fw["soft_version"], "04020021", "read from the official file name");
    assert_eq!(env.ota_json(&["firmware", "show", &id])["sha256"], fw["sha256"]);
    let got = env.ota(&["firmware", "download", &id, "-o", "copy.bin"]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(std::fs::read(env.dir.join("copy.bin")).unwrap(), bytes);
    std::fs::write(env.dir.join("spare.bin"), image(2048, 3)).unwrap();
    let spare = env.ota_json(&["firmware", "upload", &pk, "spare.bin", "--push-method", "V1V3"]);
    let spare = spare["id"].as_i64().unwrap().to_string();
    assert!(env.ota(&["firmware", "delete", &spare]).status.success());
    assert_eq!(env.ota(&["firmware", "show", &spare]).status.code(), Some(4));

    // Verification on the test device.
    let started = env.ota_json(&["verification", "start", &id, "--mac", &macs[0]]);
    assert_eq!(started["state"], "pushing");
    assert!(env.ota(&["verification", "wait", &id, "--timeout", "60s", "--interval", "1s"]).status.success());
    assert_eq!(env.ota_json(&["verification", "confirm", &id])["state"], "verified");
    assert_eq!(env.ota_json(&["verification", "show", &id])["state"], "verified");

    // A rule with a canary whose daily window is closed now: it pushes nothing, so every
    // control step is seen in its state.
    let hour = ota_domain::Clock::now(&ota_domain::SystemClock).format("%H").to_string().parse::<u32>().unwrap();
    let window = format!("{}-{}", (hour + 2) % 24, (hour + 3) % 24);
    let policy = r#"{"canary":{"count":1},"waves":[{"percent":100}]}"#;
    let rule = env.ota_json(&[
        "rules",
        "create",
        &id,
        "--name",
        "control",
        "--old-version",
        "04020006",
        "--window",
        &window,
        "--policy",
        policy,
    ]);
    let rule = rule["request_id"].as_i64().unwrap().to_string();
    assert_eq!(env.ota_json(&["rules", "preview", &rule])["targets"], 3);
    // The same rule as the API's JSON body in a file: a rerun answers the first rule.
    let body = serde_json::json!({
        "name": "from a file", "target": "macs", "macs": macs[2], "old_versions": ["04020006"],
        "period": { "start": "2026-01-01", "end": "2099-12-31" },
        "daily_window": { "start_hour": (hour + 2) % 24, "end_hour": (hour + 3) % 24 },
    });
    std::fs::write(env.dir.join("rule.json"), body.to_string()).unwrap();
    let filed = env.ota_json(&["rules", "create", &id, "--file", "rule.json"]);
    assert_eq!(filed["mac_count"], 1, "{filed}");
    assert_eq!(env.ota_json(&["rules", "create", &id, "--file", "rule.json"])["request_id"], filed["request_id"]);
    std::fs::write(env.dir.join("bad.json"), "{\"name\": 1}").unwrap();
    assert_eq!(env.ota(&["rules", "create", &id, "--file", "bad.json"]).status.code(), Some(2));
    assert_eq!(env.ota_json(&["rules", "preflight", &rule])["targets"], 3);
    let draft = env.ota_json(&[
        "rules",
        "preview",
        "--firmware",
        &id,
        "--old-version",
        "04020006",
        "--target",
        "macs",
        "--macs",
        &macs[1],
    ]);
    assert_eq!(draft["targets"], 1);
    assert_eq!(env.ota_json(&["rules", "start", &rule])["status"], "pushing");
    assert_eq!(env.ota_json(&["rules", "advance", &rule])["current_wave"], 1);
    let last = env.ota(&["rules", "advance", &rule]);
    assert_eq!(last.status.code(), Some(5));
    assert!(text(&last.stderr).contains("error[rule_wrong_status]"), "{}", text(&last.stderr));
    assert_eq!(env.ota_json(&["rules", "pause", &rule])["status"], "paused");
    let excluded = env.ota_json(&["rules", "exclude", &rule, "--macs", &macs[1]]);
    assert_eq!(excluded["excluded"], 1, "{excluded}");
    let listed = env.ota_json(&["rules", "devices", &rule, "--filter", "excluded"]);
    assert_eq!(listed["items"][0]["mac"], macs[1].as_str(), "{listed}");
    assert_eq!(env.ota_json(&["rules", "resume", &rule])["status"], "pushing");
    assert_eq!(env.ota_json(&["rules", "stop", &rule])["status"], "stopped");
    let csv = text(&env.ota(&["rules", "export", &rule]).stdout);
    assert_eq!(csv.lines().count(), 4, "a header and three targets:\n{csv}");
    // watch of a stopped rule: over, and not completed (8); of a cancelled one, the same.
    let watched = env.ota(&["rules", "watch", &rule, "--timeout", "30s"]);
    assert_eq!(watched.status.code(), Some(8), "{}", text(&watched.stderr));
    assert_eq!(env.ota_json(&["rules", "cancel", &rule])["status"], "cancelled");
    let watched = env.ota(&["rules", "watch", &rule]);
    assert_eq!(watched.status.code(), Some(8));
    assert!(text(&watched.stderr).contains("cancelled"), "{}", text(&watched.stderr));

    // A usage error exits 2 before any request: no credentials anywhere.
    let none = env.command(OTA).env_remove("OTA_TOKEN").args(["rules", "show", &rule]).output().unwrap();
    assert_eq!(none.status.code(), Some(2), "{}", text(&none.stderr));

    for d in devices {
        d.stop().await;
    }
}
