//! What the pipeline tests share: the README's pipeline block, a CI job's environment for
//! `ota`, `ota login`, and the checks that the block ran to completion and, run again,
//! changed nothing. Used by `pipeline.rs` (one `ota up`) and `topology.rs` (one API-only and
//! two gateway-only nodes).
#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const OTA: &str = env!("CARGO_BIN_EXE_ota");

/// The file the README's block uploads: a V4.1 Wi-Fi image for 04020021.
pub const README_FIRMWARE: &str = "GAgent_00ESP826_04020021_26120100.bin";

/// The block after the `pipeline-example` marker of the README.
pub fn readme_script() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let after = readme.split_once("<!-- pipeline-example").expect("the README marks its pipeline example").1;
    let block = after.split_once("```sh\n").unwrap().1.split_once("```").unwrap().0;
    assert!(block.lines().count() <= 12, "about ten lines:\n{block}");
    assert!(!block.contains("curl") && !block.contains("jq"), "only `ota`:\n{block}");
    block.to_owned()
}

pub struct Env {
    pub dir: PathBuf,
    pub url: String,
    pub token: String,
    pub pk: String,
    pub test_mac: String,
}

impl Env {
    /// `ota` with the environment a CI job would have (and no other credentials).
    pub fn command(&self, program: &str) -> Command {
        let bin = Path::new(OTA).parent().unwrap();
        let mut c = Command::new(program);
        c.current_dir(&self.dir)
            .env_clear()
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("config-unused"))
            .env("OTA_URL", &self.url)
            .env("OTA_TOKEN", &self.token)
            .env("PK", &self.pk)
            .env("TEST_MAC", &self.test_mac)
            .stdin(Stdio::null());
        c
    }

    pub fn ota(&self, args: &[&str]) -> Output {
        self.command(OTA).args(args).output().unwrap()
    }

    pub fn ota_json(&self, args: &[&str]) -> Value {
        let out = self.ota(&[args, &["--json"]].concat());
        assert!(out.status.success(), "ota {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn script(&self, script: &str) -> Output {
        self.command("bash").arg("-c").arg(script).output().unwrap()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A firmware image of `size` bytes.
pub fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// `ota login` against `url` with a user name and the password on standard input, its
/// configuration under `config_home`; returns the API token it stored (checked 0600).
pub fn login(url: &str, config_home: &Path, username: &str, password: &str) -> String {
    let mut login = Command::new(OTA)
        .args(["login", "--url", url, "--username", username])
        .env_clear()
        .env("XDG_CONFIG_HOME", config_home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(login.stdin.take().unwrap(), "{password}").unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "login: {}", text(&out.stderr));
    let stored_path = config_home.join("ota/client.json");
    let stored: Value = serde_json::from_slice(&std::fs::read(&stored_path).unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&stored_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let token = stored["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ota_"), "an API token, not a session");
    token
}

/// What the README's block left behind.
pub struct PipelineRun {
    pub firmware_id: i64,
    pub rule_id: i64,
}

/// Runs the README's block twice in `env` (its firmware file written first): the first run
/// verifies the firmware and completes a rule over `targets` devices, watched to the end; the
/// second succeeds and changes nothing.
pub fn readme_pipeline_runs_twice(env: &Env, targets: u64) -> PipelineRun {
    std::fs::write(env.dir.join(README_FIRMWARE), image(64 * 1024, 1)).unwrap();
    let script = readme_script();
    let first = env.script(&script);
    eprintln!("first run:\n{}{}", text(&first.stdout), text(&first.stderr));
    assert!(first.status.success(), "first run failed:\n{}\n{}", text(&first.stdout), text(&first.stderr));
    let firmware = env.ota_json(&["firmware", "list", &env.pk]);
    assert_eq!(firmware["total"], 1, "{firmware}");
    let fw = firmware["items"][0]["id"].as_i64().unwrap();
    assert_eq!(firmware["items"][0]["verified"], true);
    let rules = env.ota_json(&["rules", "list", "--firmware-id", &fw.to_string()]);
    assert_eq!(rules["total"], 1, "{rules}");
    let rule = rules["items"][0]["request_id"].as_i64().unwrap();
    let done = env.ota_json(&["rules", "show", &rule.to_string()]);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["targets"], targets, "the devices still on 04020006: {done}");
    assert_eq!(done["counts"]["succeeded"], targets);
    // Not a terminal: `watch` printed JSON lines, the last one the completion.
    let last = text(&first.stdout).lines().rev().find(|l| l.starts_with('{')).map(str::to_owned).unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!((last["request_id"].as_i64(), last["status"].as_str()), (Some(rule), Some("completed")));

    // The same script again: success, and nothing new or changed.
    let second = env.script(&script);
    let out2 = text(&second.stdout);
    eprintln!("second run:\n{out2}{}", text(&second.stderr));
    assert!(second.status.success(), "second run failed:\n{out2}\n{}", text(&second.stderr));
    assert!(out2.contains("already verified"), "{out2}");
    assert!(out2.contains("already started"), "{out2}");
    assert_eq!(env.ota_json(&["firmware", "list", &env.pk]), firmware, "the firmware is unchanged");
    let rules2 = env.ota_json(&["rules", "list", "--firmware-id", &fw.to_string()]);
    assert_eq!(rules2["total"], 1);
    let again = env.ota_json(&["rules", "show", &rule.to_string()]);
    for field in ["status", "counts", "started_at", "completed_at", "updated_at", "waves"] {
        assert_eq!(again[field], done[field], "{field} changed");
    }
    PipelineRun { firmware_id: fw, rule_id: rule }
}
