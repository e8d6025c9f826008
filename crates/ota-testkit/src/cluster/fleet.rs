//! A simulated fleet spread over nodes, one rule pushed to it, and the checks that it ended
//! exactly once per device, in the database and on the devices.

use std::collections::HashMap;
use std::time::Duration;

use ota_sim::DeviceHandle;
use serde_json::{Value, json};

use super::{Api, Node, device, rule_body, verify};
use ota_sim::Timing;

pub const TARGET: &str = "04020021";

/// Short stage timeouts and an immediate-ish retry, so a test's faults heal in seconds.
pub fn fast_policy() -> Value {
    json!({
        "retry": { "attempts": 5, "backoff_s": 2, "within_opening": true },
        "timeouts": { "notified_s": 10, "checked_s": 10, "downloading_s": 20, "downloaded_wifi_s": 15 },
    })
}

pub struct Fleet {
    pub pk: String,
    pub macs: Vec<String>,
    /// Each device with the index of the node it talks to.
    pub devices: Vec<(usize, DeviceHandle)>,
}

impl Fleet {
    /// A product and `n` V4.1 devices spread over `nodes`, all online.
    pub async fn boot(api: &Api, nodes: &[&Node], n: usize, timing: &Timing) -> Fleet {
        let product = api.post("/api/v1/products", json!({ "name": "lamp" })).await.unwrap();
        let pk = product["product_key"].as_str().unwrap().to_owned();
        let salt: u16 = rand::random();
        let macs: Vec<String> = (0..n).map(|i| format!("5C{salt:04X}{i:06X}")).collect();
        let devices = macs
            .iter()
            .enumerate()
            .map(|(i, mac)| (i % nodes.len(), device(nodes[i % nodes.len()], &pk, mac, timing)))
            .collect();
        let fleet = Fleet { pk, macs, devices };
        let path = format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk);
        api.wait(&path, "all online", Duration::from_secs(60), |v| v["total"].as_u64() == Some(n as u64)).await;
        fleet
    }

    pub fn on_node(&self, node: usize) -> usize {
        self.devices.iter().filter(|(i, _)| *i == node).count()
    }

    /// Uploads and verifies the firmware, creates the rule and starts it (through the first
    /// node that answers).
    pub async fn start_rule(&mut self, api: &Api, database_url: &str, policy: Value) -> i64 {
        let fw = api.upload_wifi(&self.pk, TARGET, 64 * 1024).await;
        verify(database_url, fw).await;
        let rule = api.post(&format!("/api/v1/firmware/{fw}/rules"), rule_body(policy)).await.unwrap();
        let id = rule["request_id"].as_i64().unwrap();
        let started = api
            .post(&format!("/api/v1/rules/{id}/start"), json!({ "confirm_stable": true, "accept_terms": true }))
            .await;
        assert_eq!(started.unwrap()["target_devices"].as_u64(), Some(self.devices.len() as u64));
        id
    }

    pub async fn wait_notified(&self, api: &Api, rule: i64, at_least: i64) -> Value {
        api.wait(&format!("/api/v1/rules/{rule}"), &format!("{at_least} notified"), Duration::from_secs(60), |v| {
            v["counts"]["notified"].as_i64() >= Some(at_least)
        })
        .await
    }

    /// Waits for the rule to complete; on timeout shows the targets that did not succeed.
    pub async fn wait_completed(&self, api: &Api, rule: i64, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            if let Ok(v) = api.get(&format!("/api/v1/rules/{rule}")).await {
                if v["status"] == "completed" {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stuck = api.get(&format!("/api/v1/rules/{rule}/devices?filter=not_succeeded&per_page=5")).await;
        panic!(
            "rule {rule} did not complete within {limit:?}: {:#}\nnot succeeded: {:#}",
            last["counts"],
            stuck.unwrap_or_default()
        );
    }

    pub async fn stop(self) {
        for (_, d) in self.devices {
            d.stop().await;
        }
    }

    /// Every device succeeded exactly once, the counts equal the devices' own truth, and
    /// nothing is left in a non-final stage (else `Err` says what is wrong); the outcome
    /// counts the pushes the devices received against the retries the records show.
    pub async fn check_exactly_once(self, api: &Api, rule: i64, done: &Value) -> Result<Outcome, String> {
        let n = self.devices.len() as i64;
        let c = &done["counts"];
        if (c["targets"].as_i64(), c["succeeded"].as_i64()) != (Some(n), Some(n)) {
            return Err(format!("targets and successes are not {n}: {done:#}"));
        }
        for k in ["failed", "expired", "pending", "in_progress"] {
            if c[k].as_i64() != Some(0) {
                return Err(format!("{k} is not 0: {done:#}"));
            }
        }
        let list = api.get(&format!("/api/v1/rules/{rule}/devices?per_page=200")).await?;
        let mut items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        let pages = list["total"].as_i64().unwrap_or(0).div_euclid(200) + 1;
        for page in 2..=pages {
            let more = api.get(&format!("/api/v1/rules/{rule}/devices?per_page=200&page={page}")).await?;
            items.extend(more["items"].as_array().cloned().unwrap_or_default());
        }
        if items.len() as i64 != n {
            return Err(format!("{} records for {n} devices", items.len()));
        }
        let mut failures: HashMap<String, usize> = HashMap::new();
        for t in &items {
            let attempts = t["attempts"].as_array().cloned().unwrap_or_default();
            if t["stage"] != "succeeded" || attempts.last().map(|a| a["outcome"].clone()) != Some(json!("succeeded")) {
                return Err(format!("a target did not end succeeded: {t:#}"));
            }
            let failed = attempts.iter().filter(|a| a["outcome"] == "failed").count();
            if failures.insert(t["did"].as_str().unwrap_or_default().to_owned(), failed).is_some() {
                return Err(format!("two records for one device: {t:#}"));
            }
        }
        let mut out = Outcome { devices: n as usize, ..Outcome::default() };
        for (_, d) in self.devices {
            let snap = d.stop().await;
            if snap.wifi_sw != TARGET || snap.counters.upgrades != 1 {
                return Err(format!("{} runs {} after {} upgrades", snap.mac, snap.wifi_sw, snap.counters.upgrades));
            }
            let failed = failures.get(snap.did.as_deref().unwrap_or_default()).copied().unwrap_or(0);
            let pushes = snap.counters.pushes as usize;
            out.received += pushes;
            out.retried += failed;
            if pushes > 1 + failed {
                out.extra += 1;
            }
        }
        Ok(out)
    }
}

/// What [`Fleet::check_exactly_once`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub devices: usize,
    /// Pushes the devices received.
    pub received: usize,
    /// Retries after a failure the records show.
    pub retried: usize,
    /// Devices that received a push beyond a retry after a recorded failure: one whose
    /// acknowledgement died with a `kill -9`d process or waited out a database outage.
    pub extra: usize,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} devices succeeded once; {} pushes received, {} retries after a recorded failure, {} devices with an extra push",
            self.devices, self.received, self.retried, self.extra
        )
    }
}
