//! Configuration: defaults → file (`--config`, `OTA_CONFIG`, or `./ota.toml` when present) →
//! environment (`OTA_<KEY>`, e.g. `OTA_DATABASE_URL`). See `ota.example.toml`.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
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
            push_delivery_timeout_secs: 10,
            max_concurrent_downloads: 0,
            verification_timeout_minutes: 10,
            geoip_database: None,
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    anyhow::bail!("configuration file {} does not exist", path.display());
                }
                figment = figment.merge(Toml::file(path));
            }
            None if Path::new("ota.toml").is_file() => figment = figment.merge(Toml::file("ota.toml")),
            None => {}
        }
        let config: Config = figment
            .merge(Env::prefixed("OTA_").ignore(&["CONFIG", "TEST_DATABASE", "TEST_PG_URL", "URL", "TOKEN"]))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
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

fn check_node_id(id: &str) -> anyhow::Result<&str> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    anyhow::ensure!(ok, "node_id `{id}` must be 1–64 letters, digits, `.`, `_` or `-`");
    Ok(id)
}

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
