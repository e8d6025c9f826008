//! Configuration: defaults → file (`--config`, `OTA_CONFIG`, or `./ota.toml` when present) →
//! environment (`OTA_<KEY>`, e.g. `OTA_DATABASE_URL`). See `ota.example.toml`.
//!
//! A key the file does not know is an error naming it (a typo would otherwise be a setting
//! silently not applied); an `OTA_*` environment variable that is no key is a warning (the
//! environment is shared with other tools), except the names in [`RESERVED_ENV`].

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// What `ota up` runs: everything, only the management API, or only the device side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Management API, device HTTP, MQTT edge and scheduler in one process.
    All,
    /// The management API only (it reaches devices through the broker).
    Api,
    /// Device HTTP, MQTT edge (with its broker link) and the scheduler; no management API.
    Gateway,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    pub fn serves_devices(self) -> bool {
        matches!(self, Role::All | Role::Gateway)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Gateway => "gateway",
        }
    }
}

/// Where firmware files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareStore {
    /// `<data_dir>/firmware` on this node (one node, or nodes sharing that directory).
    Local,
    /// An S3-compatible object store shared by every node (`s3_*` keys), with a read-through
    /// cache on each node.
    S3,
}

/// `OTA_*` names that are not configuration keys but are read by something else: the
/// configuration file path, the log filter, the `ota` client (`OTA_URL`, `OTA_TOKEN`), and the
/// tests, simulator, benchmarks and fault harness (prefixes ending in `_`).
pub const RESERVED_ENV: &[&str] =
    &["OTA_CONFIG", "OTA_LOG", "OTA_URL", "OTA_TOKEN", "OTA_TEST_", "OTA_SIM_", "OTA_BENCH_", "OTA_FAULTS_"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// What this node runs (`ota up --role` wins over it).
    pub role: Role,
    /// Where the SQLite database, firmware files and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// `sqlite:<path>`, a plain path, or `postgres://…`; default `sqlite:<data_dir>/ota.db`.
    pub database_url: Option<String>,
    /// Connections in the database pool.
    pub database_max_connections: u32,
    /// Address of the management API.
    pub api_bind: String,
    /// API worker threads (0 = one per core).
    pub api_workers: usize,
    /// Secret that signs login sessions; generated into `<data_dir>/jwt-secret` when absent.
    pub jwt_secret: Option<String>,
    /// How long a login session lasts.
    pub session_ttl_minutes: i64,
    /// Largest firmware file accepted.
    pub max_firmware_bytes: u64,
    /// Largest JSON request body accepted.
    pub max_json_bytes: usize,
    /// Comma-separated origins allowed to call the API from browsers (`*` for any).
    pub cors_allowed_origins: String,
    /// Comma-separated addresses of reverse proxies whose `X-Forwarded-For` names the client
    /// (the login throttle counts per client address); empty: the peer is the client.
    pub trusted_proxies: String,
    /// Password hashes at once (0: one per core); more wait up to `password_queue_ms`.
    pub password_hash_slots: usize,
    /// How long a login may wait for a password hash slot before a 503.
    pub password_queue_ms: u64,
    /// First admin, created only when no user exists yet.
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    /// The tenant the first admin is created in.
    pub admin_tenant: String,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Prometheus `/metrics` on an address of its own (never the device HTTP or the API
    /// port); unset: no metrics listener.
    pub metrics_bind: Option<String>,
    /// Device HTTP (what GAgent calls on `api.gizwits.com:80`). Devices always use port 80:
    /// in production bind `0.0.0.0:80` or forward 80 to this port (see the README).
    pub device_http_bind: String,
    /// The MQTT edge devices log in to. Not 1883 by default: a local broker often owns it.
    /// Devices learn the port from provision, so any port works.
    pub device_mqtt_bind: String,
    /// Host name put into download URLs (devices fetch them from port 80 of it).
    pub device_public_host: String,
    /// MQTT host handed to devices by provision; default `device_public_host`.
    pub device_mqtt_host: Option<String>,
    /// MQTT port handed to devices by provision; default the port of `device_mqtt_bind`.
    pub device_mqtt_port: Option<u16>,
    /// `embedded` (rumqttd in this process) or `mqtt://host:port` of a broker shared by
    /// several gateways.
    pub broker: String,
    pub broker_username: Option<String>,
    pub broker_password: Option<String>,
    /// Embedded broker only: also listen for backend MQTT 3.1.1 clients here (no auth; keep it
    /// on loopback).
    pub broker_listen: Option<String>,
    /// Pause between two MQTT packets to one device (GAgent loses the second of two packets
    /// that arrive in one read).
    pub mqtt_pace_ms: u64,
    /// Push-rule notifications this gateway sends per second at most (0: none from here).
    pub push_rate: u32,
    /// This node's stable id: its devices' sessions and downloads are attributed to it, and
    /// a restart cleans up after the previous run of the same id. Default: generated once
    /// and kept in `<data_dir>/node-id` (so nodes sharing a data directory need one each).
    pub node_id: Option<String>,
    /// A gateway silent this long is dead: the others mark its devices offline and fail its
    /// downloads. It renews its lease every third of this.
    pub gateway_lease_secs: u64,
    /// Registrations and provisions this gateway works on at once; one more that finds no
    /// slot within `admission_wait_ms` is answered 503 `device_calls_busy` (GAgent retries it).
    pub device_calls_in_flight: usize,
    /// MQTT logins this gateway checks at once; one more that finds no slot within
    /// `admission_wait_ms` is refused with CONNACK 3 (the device logs in again).
    pub mqtt_logins_in_flight: usize,
    /// How long a registration, provision or login waits for a slot before it is refused.
    pub admission_wait_ms: u64,
    /// A push no gateway delivered to the device's socket within this is no notification: it
    /// is sent again when the device is next online.
    pub push_delivery_timeout_secs: u64,
    /// Concurrent firmware downloads this gateway serves to push-rule targets at most (counted
    /// in the database); a device over it is answered "no update" and pushed again when a slot
    /// frees. 0: no cap.
    pub max_concurrent_downloads: u32,
    /// How long a verification waits for the test device to report the new version.
    pub verification_timeout_minutes: i64,
    /// A MaxMind-format GeoIP database (GeoIP2/GeoLite2 City or Country `.mmdb`) that fills
    /// the region of devices registering without one; a region set by an operator or an
    /// import is never overwritten. Read into memory at startup; unset = no lookup.
    pub geoip_database: Option<PathBuf>,
    /// `local` (files under `<data_dir>/firmware`) or `s3` (an S3-compatible object store
    /// shared by all nodes, set by the `s3_*` keys).
    pub firmware_store: FirmwareStore,
    /// `http://host:port` of the S3-compatible server (MinIO, Garage, Ceph RGW, AWS…).
    pub s3_endpoint: Option<String>,
    /// The bucket; it must exist (the server does not create it).
    pub s3_bucket: Option<String>,
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Prepended to every object key (`firmware/` → `firmware/<sha256>`).
    pub s3_prefix: String,
    /// `http://host/bucket/key` URLs (MinIO, moto, IP endpoints) rather than
    /// `http://bucket.host/key`.
    pub s3_path_style: bool,
    /// The node's read-through cache of the S3 store; default `<data_dir>/firmware-cache`.
    pub firmware_cache_dir: Option<PathBuf>,
    /// Bytes the cache may hold before the least recently used files go; 0: no limit.
    pub firmware_cache_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::All,
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_max_connections: 10,
            api_bind: "0.0.0.0:8080".into(),
            api_workers: 0,
            jwt_secret: None,
            session_ttl_minutes: 12 * 60,
            max_firmware_bytes: 8 * 1024 * 1024,
            max_json_bytes: 64 * 1024,
            cors_allowed_origins: String::new(),
            trusted_proxies: String::new(),
            password_hash_slots: 0,
            password_queue_ms: ota_domain::DEFAULT_PASSWORD_QUEUE_DEADLINE_MS,
            admin_user: None,
            admin_password: None,
            admin_tenant: "default".into(),
            log_format: "text".into(),
            metrics_bind: None,
            device_http_bind: "0.0.0.0:8081".into(),
            device_mqtt_bind: "0.0.0.0:1884".into(),
            device_public_host: "api.gizwits.com".into(),
            device_mqtt_host: None,
            device_mqtt_port: None,
            broker: "embedded".into(),
            broker_username: None,
            broker_password: None,
            broker_listen: None,
            mqtt_pace_ms: 20,
            push_rate: 50,
            node_id: None,
            gateway_lease_secs: 30,
            device_calls_in_flight: ota_gateway::admission::DEFAULT_DEVICE_CALLS_IN_FLIGHT,
            mqtt_logins_in_flight: ota_gateway::admission::DEFAULT_MQTT_LOGINS_IN_FLIGHT,
            admission_wait_ms: ota_gateway::admission::DEFAULT_ADMISSION_WAIT_MS,
            push_delivery_timeout_secs: 10,
            max_concurrent_downloads: 0,
            verification_timeout_minutes: 10,
            geoip_database: None,
            firmware_store: FirmwareStore::Local,
            s3_endpoint: None,
            s3_bucket: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_prefix: String::new(),
            s3_path_style: true,
            firmware_cache_dir: None,
            firmware_cache_max_bytes: 0,
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = match file {
            Some(path) => {
                if !path.is_file() {
                    anyhow::bail!("configuration file {} does not exist", path.display());
                }
                Some(path)
            }
            None if Path::new("ota.toml").is_file() => Some(Path::new("ota.toml")),
            None => None,
        };
        if let Some(path) = file {
            check_file_keys(path)?;
            figment = figment.merge(Toml::file(path));
        }
        let keys = Config::keys();
        let env = Env::prefixed("OTA_").filter(move |k| keys.iter().any(|key| k == key.as_str()));
        let config: Config = figment.merge(env).extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// Every configuration key, from the struct itself (so the file check, the environment
    /// filter, the example file test and the compose test cannot drift from it).
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The environment variable that sets `key`.
    pub fn env_name(key: &str) -> String {
        format!("OTA_{}", key.to_ascii_uppercase())
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("ota.db").display()))
    }

    /// The broker setting as the gateway needs it.
    pub fn bus(&self) -> anyhow::Result<ota_gateway::BusConfig> {
        if self.broker.trim() == "embedded" {
            let listen = match &self.broker_listen {
                None => None,
                Some(a) => Some(a.parse().map_err(|e| anyhow::anyhow!("broker_listen `{a}`: {e}"))?),
            };
            return Ok(ota_gateway::BusConfig::Embedded { listen });
        }
        let rest =
            self.broker.trim().strip_prefix("mqtt://").ok_or_else(|| {
                anyhow::anyhow!("broker must be `embedded` or `mqtt://host:port`, not `{}`", self.broker)
            })?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| anyhow::anyhow!("broker port `{p}` is not a port"))?),
            None => (rest, 1883),
        };
        anyhow::ensure!(!host.is_empty(), "broker `{}` names no host", self.broker);
        let client_id = format!("ota-gw-{}", hex::encode(rand::random::<[u8; 4]>()));
        Ok(ota_gateway::BusConfig::External {
            host: host.to_owned(),
            port,
            client_id,
            username: self.broker_username.clone(),
            password: self.broker_password.clone(),
        })
    }

    /// `node_id`, or the id kept in `<data_dir>/node-id` (created on first use).
    pub fn node_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.node_id {
            return check_node_id(id.trim()).map(str::to_owned);
        }
        let path = self.data_dir.join("node-id");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            return check_node_id(existing.trim())
                .map(str::to_owned)
                .map_err(|e| anyhow::anyhow!("{e} (in {}; delete the file to get a new id)", path.display()));
        }
        let id = format!("gw-{}", hex::encode(rand::random::<[u8; 4]>()));
        std::fs::write(&path, format!("{id}\n"))
            .map_err(|e| anyhow::anyhow!("cannot keep the node id in {}: {e}", path.display()))?;
        Ok(id)
    }

    /// The S3 store's settings (`firmware_store = "s3"`); a missing key is an error naming it.
    pub fn s3_settings(&self) -> anyhow::Result<ota_domain::store::s3::S3Settings> {
        let required = |value: &Option<String>, key: &str| {
            value
                .clone()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| anyhow::anyhow!("firmware_store = \"s3\" needs {key} (or {})", Config::env_name(key)))
        };
        Ok(ota_domain::store::s3::S3Settings {
            endpoint: required(&self.s3_endpoint, "s3_endpoint")?,
            bucket: required(&self.s3_bucket, "s3_bucket")?,
            region: self.s3_region.clone(),
            access_key_id: required(&self.s3_access_key_id, "s3_access_key_id")?,
            secret_access_key: required(&self.s3_secret_access_key, "s3_secret_access_key")?,
            prefix: self.s3_prefix.clone(),
            path_style: self.s3_path_style,
            cache_dir: self.firmware_cache_dir.clone().unwrap_or_else(|| self.data_dir.join("firmware-cache")),
            cache_max_bytes: self.firmware_cache_max_bytes,
        })
    }

    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_allowed_origins.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    /// The trusted proxies; an entry that is no IP address is a startup error naming it.
    pub fn trusted_proxy_addrs(&self) -> anyhow::Result<Vec<std::net::IpAddr>> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| anyhow::anyhow!("trusted_proxies: `{s}` is not an IP address")))
            .collect()
    }
}

/// Refuses a configuration file with a key `Config` does not have, naming the key (and the
/// closest real one).
fn check_file_keys(path: &Path) -> anyhow::Result<()> {
    use figment::Provider;
    let data =
        Toml::file(path).data().map_err(|e| anyhow::anyhow!("invalid configuration in {}: {e}", path.display()))?;
    let keys = Config::keys();
    let mut unknown: Vec<String> = data
        .values()
        .flat_map(|dict| dict.keys())
        .filter(|k| !keys.contains(k))
        .map(|k| match closest(k, &keys) {
            Some(near) => format!("`{k}` (did you mean `{near}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    unknown.sort();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown configuration key{} in {}: {}; every key is listed in ota.example.toml",
        if unknown.len() == 1 { "" } else { "s" },
        path.display(),
        unknown.join(", ")
    );
    Ok(())
}

fn closest<'a>(word: &str, keys: &'a [String]) -> Option<&'a str> {
    keys.iter()
        .map(|k| (strsim::levenshtein(word, k), k))
        .filter(|(d, _)| *d <= (word.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Warnings for `OTA_*` variables in `vars` that set no key and are not reserved for
/// something else (a misspelt `OTA_API_BIDN` would otherwise do nothing, silently).
pub fn unknown_environment(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let keys = Config::keys();
    let mut out: Vec<String> = vars
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("OTA_"))
        .filter(|name| !keys.iter().any(|k| Config::env_name(k) == *name))
        .filter(|name| !RESERVED_ENV.iter().any(|r| if r.ends_with('_') { name.starts_with(r) } else { name == r }))
        .map(|name| {
            let key = name["OTA_".len()..].to_ascii_lowercase();
            match closest(&key, &keys) {
                Some(near) => format!(
                    "{name} is no configuration setting and is ignored (did you mean {}?)",
                    Config::env_name(near)
                ),
                None => format!("{name} is no configuration setting and is ignored"),
            }
        })
        .collect();
    out.sort();
    out
}

fn check_node_id(id: &str) -> anyhow::Result<&str> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    anyhow::ensure!(ok, "node_id `{id}` must be 1–64 letters, digits, `.`, `_` or `-`");
    Ok(id)
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod compose_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("custom.toml", "api_bind = \"127.0.0.1:9000\"\nmax_firmware_bytes = 1024\n")?;
            jail.set_env("OTA_MAX_FIRMWARE_BYTES", "2048");
            jail.set_env("OTA_CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example");
            let c = Config::load(Some(Path::new("custom.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.api_bind, "127.0.0.1:9000");
            assert_eq!(c.max_firmware_bytes, 2048);
            assert_eq!(c.cors_origins(), vec!["https://a.example", "https://b.example"]);
            assert_eq!(c.database_url(), "sqlite:data/ota.db");
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            assert!(matches!(c.bus(), Ok(ota_gateway::BusConfig::Embedded { listen: None })));
            jail.set_env("OTA_BROKER", "mqtt://127.0.0.1:1883");
            let c = Config::load(Some(Path::new("custom.toml"))).map_err(|e| e.to_string())?;
            assert!(matches!(c.bus(), Ok(ota_gateway::BusConfig::External { port: 1883, .. })));
            jail.set_env("OTA_BROKER", "amqp://x");
            let c = Config::load(Some(Path::new("custom.toml"))).map_err(|e| e.to_string())?;
            assert!(c.bus().is_err());
            assert_eq!(c.geoip_database, None);
            jail.set_env("OTA_GEOIP_DATABASE", "/var/lib/GeoIP/GeoLite2-City.mmdb");
            let c = Config::load(Some(Path::new("custom.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.geoip_database.as_deref(), Some(Path::new("/var/lib/GeoIP/GeoLite2-City.mmdb")));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "api_bindd = \"127.0.0.1:9000\"\nbogus = 1\npush_rate = 3\n")?;
            let err = Config::load(Some(Path::new("typo.toml"))).expect_err("refused").to_string();
            assert!(err.contains("`api_bindd` (did you mean `api_bind`?)"), "{err}");
            assert!(err.contains("`bogus`") && !err.contains("`bogus` (did you mean"), "{err}");
            assert!(err.contains("typo.toml"), "{err}");
            // ./ota.toml, read without --config, is checked the same way.
            jail.create_file("ota.toml", "device_http_bnd = \"0.0.0.0:80\"\n")?;
            let err = Config::load(None).expect_err("refused").to_string();
            assert!(err.contains("`device_http_bnd` (did you mean `device_http_bind`?)"), "{err}");
            jail.create_file("ota.toml", "role = \"gateway\"\n")?;
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.role, Role::Gateway);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_role_comes_from_the_file_or_the_environment() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.role, Role::All);
            jail.set_env("OTA_ROLE", "api");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.role, Role::Api);
            jail.set_env("OTA_ROLE", "everything");
            let err = Config::load(None).expect_err("refused").to_string();
            assert!(err.contains("everything"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_ota_variables_warn_and_reserved_ones_do_not() {
        let vars = |names: &[&str]| names.iter().map(|n| ((*n).to_owned(), "x".to_owned())).collect::<Vec<_>>();
        let warnings = unknown_environment(vars(&[
            "OTA_API_BIDN",
            "OTA_API_BIND",
            "OTA_ROLE",
            "OTA_URL",
            "OTA_TOKEN",
            "OTA_CONFIG",
            "OTA_LOG",
            "OTA_TEST_DATABASE",
            "OTA_TEST_PG_URL",
            "OTA_SIM_HTTP",
            "OTA_BENCH_LOG",
            "OTA_FAULTS_KEEP",
            "OTA_NONSENSE",
            "PATH",
        ]));
        assert_eq!(
            warnings,
            vec![
                "OTA_API_BIDN is no configuration setting and is ignored (did you mean OTA_API_BIND?)",
                "OTA_NONSENSE is no configuration setting and is ignored",
            ]
        );
        // An unknown variable does not stop the start (the environment is shared).
        figment::Jail::expect_with(|jail| {
            jail.set_env("OTA_NONSENSE", "1");
            jail.set_env("OTA_URL", "http://127.0.0.1:8080");
            jail.set_env("OTA_TOKEN", "t");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.api_bind, "0.0.0.0:8080");
            Ok(())
        });
    }

    /// Every `OTA_*` name the code, tests and docs use is a configuration key or reserved
    /// (so none of them is warned about).
    #[test]
    fn every_ota_name_in_the_repository_is_a_key_or_reserved() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut names = std::collections::BTreeSet::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !["target", ".git", "data", "node_modules"].contains(&name.as_str()) {
                        stack.push(path);
                    }
                    continue;
                }
                let wanted =
                    ["rs", "md", "toml", "yml", "yaml", "sh"].iter().any(|e| path.extension().is_some_and(|x| x == *e))
                        || ["Dockerfile", "run", "schemathesis"].contains(&name.as_str());
                let Ok(text) = std::fs::read_to_string(&path) else { continue };
                if !wanted {
                    continue;
                }
                let bytes = text.as_bytes();
                for (i, _) in text.match_indices("OTA_") {
                    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                        continue;
                    }
                    let end = text[i..]
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .map_or(text.len(), |n| i + n);
                    let name = &text[i..end];
                    // `OTA_<KEY>`-style placeholders and constants of the device protocol.
                    if name.len() > 4 && !name.ends_with('_') && !name.starts_with("OTA_PUSH_V") {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
        assert!(names.contains("OTA_DATABASE_URL") && names.contains("OTA_FAULTS_KEEP"), "{names:?}");
        // Misspelt on purpose: the warning's tests and its example in the README.
        for deliberate in ["OTA_API_BIDN", "OTA_NONSENSE", "OTA_PUSH_RAET"] {
            names.remove(deliberate);
        }
        let vars = names.iter().map(|n| (n.clone(), String::new()));
        assert_eq!(unknown_environment(vars), Vec::<String>::new());
    }

    /// `ota.example.toml` lists every key, and only keys; what it sets uncommented is the
    /// default.
    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ota.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut listed = std::collections::BTreeSet::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    listed.insert(key.to_owned());
                }
            }
        }
        let keys: std::collections::BTreeSet<String> = Config::keys().into_iter().collect();
        assert_eq!(listed, keys, "ota.example.toml and the Config struct differ");
        let loaded = Config::load(Some(&path)).unwrap();
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "a value set in ota.example.toml is not the default"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_s3_store_is_chosen_by_configuration_and_names_what_it_lacks() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.firmware_store, FirmwareStore::Local);
            jail.set_env("OTA_FIRMWARE_STORE", "s3");
            jail.set_env("OTA_S3_ENDPOINT", "http://minio:9000");
            jail.set_env("OTA_S3_BUCKET", "firmware");
            jail.set_env("OTA_S3_ACCESS_KEY_ID", "key");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.firmware_store, FirmwareStore::S3);
            let err = c.s3_settings().expect_err("no secret").to_string();
            assert!(err.contains("s3_secret_access_key") && err.contains("OTA_S3_SECRET_ACCESS_KEY"), "{err}");
            jail.set_env("OTA_S3_SECRET_ACCESS_KEY", "secret");
            jail.set_env("OTA_FIRMWARE_CACHE_MAX_BYTES", "1000000");
            let s = Config::load(None).map_err(|e| e.to_string())?.s3_settings().map_err(|e| e.to_string())?;
            assert_eq!(
                (s.endpoint.as_str(), s.bucket.as_str(), s.region.as_str()),
                ("http://minio:9000", "firmware", "us-east-1")
            );
            assert!(s.path_style);
            assert_eq!(s.cache_dir, Path::new("data/firmware-cache"));
            assert_eq!(s.cache_max_bytes, 1_000_000);
            jail.set_env("OTA_FIRMWARE_STORE", "nfs");
            let err = Config::load(None).expect_err("refused").to_string();
            assert!(err.contains("nfs"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_node_id_is_kept_in_the_data_directory_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        let first = config.node_id().unwrap();
        assert!(first.starts_with("gw-") && first.len() == 11, "{first}");
        assert_eq!(config.node_id().unwrap(), first, "the same id on every start");
        let named = Config { node_id: Some("gw-eu-1".into()), ..config.clone() };
        assert_eq!(named.node_id().unwrap(), "gw-eu-1");
        let bad = Config { node_id: Some("gw eu/1".into()), ..config.clone() };
        assert!(bad.node_id().unwrap_err().to_string().contains("node_id `gw eu/1`"));
        std::fs::write(dir.path().join("node-id"), "no good\n").unwrap();
        assert!(config.node_id().unwrap_err().to_string().contains("delete the file"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn the_clients_environment_is_not_server_configuration() {
        // `ota up` in a CI job that also sets the client's OTA_URL / OTA_TOKEN.
        figment::Jail::expect_with(|jail| {
            jail.set_env("OTA_URL", "http://ota.example:8080");
            jail.set_env("OTA_TOKEN", "ota_secret");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.api_bind, Config::default().api_bind);
            Ok(())
        });
    }
}
