//! `ota`: run the OTA server and administer it.

mod client;
mod config;

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_api::{ApiSettings, JwtKeys};
use ota_domain::geoip::MaxMindRegions;
use ota_domain::store::FsBlobStore;
use ota_domain::{Db, Domain, DomainSettings, SystemClock};

use config::Config;

#[derive(Parser)]
#[command(name = "ota", version, about = "Self-hosted OTA firmware rollout server for Gizwits GAgent devices")]
struct Cli {
    /// Configuration file (TOML); default `./ota.toml` when it exists.
    #[arg(long, global = true, env = "OTA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the configured database (SQLite in ./data by default).
    Up,
    /// Apply pending database migrations and exit.
    Migrate {
        /// Revert every migration instead (destroys all data).
        #[arg(long)]
        revert_all: bool,
    },
    /// Administer users.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the OpenAPI document of the management API.
    Openapi,
    /// Run simulated GAgent devices against a gateway (see `ota sim --help`).
    Sim(Box<ota_sim::SimArgs>),
    /// The client commands for pipelines and operators (README: "`ota` in pipelines").
    #[command(flatten)]
    Client(Box<client::ClientCommand>),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant admin (and the tenant, if new).
    Create {
        #[arg(long)]
        username: String,
        /// The password; prefer --password-stdin so it stays out of the shell history.
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        // A client of a server somewhere: the server's configuration is not read.
        std::process::exit(client::main(*command));
    }
    if let Command::Sim(args) = cli.command {
        // The simulator needs no configuration and wants every core.
        let outcome =
            tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(ota_sim::run(*args)));
        if let Err(e) = outcome {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let outcome = Config::load(cli.config.as_deref()).and_then(|config| {
        init_logging(&config);
        actix_rt::System::new().block_on(run(cli.command, config))
    });
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if config.log_format == "json" { builder.json().try_init() } else { builder.try_init() };
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&ota_api::openapi())?);
            Ok(())
        }
        Command::Migrate { revert_all } => {
            let db = open_db(&config)?;
            let names = if revert_all { db.revert_all()? } else { db.migrate()? };
            let verb = if revert_all { "reverted" } else { "applied" };
            if names.is_empty() {
                println!("nothing to do: the database is up to date");
            }
            for name in names {
                println!("{verb} {name}");
            }
            Ok(())
        }
        Command::Admin { command: AdminCommand::Create { username, password, password_stdin, tenant } } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
                (None, false) => anyhow::bail!("give --password or --password-stdin"),
            };
            let domain = open_domain(&config)?;
            let created =
                domain.create_admin(&tenant, &username, &password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created admin `{}` in tenant `{}`", created.username, created.tenant);
            Ok(())
        }
        Command::Up => up(config).await,
        Command::Sim(_) => anyhow::bail!("`ota sim` runs before the configuration is loaded"),
        Command::Client(_) => anyhow::bail!("the client commands run before the configuration is loaded"),
    }
}

fn open_db(config: &Config) -> anyhow::Result<Db> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    Ok(Db::connect(&config.database_url(), config.database_max_connections)?)
}

/// Connects, migrates and builds the domain.
fn open_domain(config: &Config) -> anyhow::Result<Domain> {
    let geoip = open_geoip(config)?;
    let db = open_db(config)?;
    for name in db.migrate()? {
        tracing::info!(migration = %name, "applied migration");
    }
    let store = FsBlobStore::new(config.data_dir.join("firmware"))
        .with_context(|| format!("creating the firmware store under {}", config.data_dir.display()))?;
    let mut settings = DomainSettings::new(config.max_firmware_bytes, config.data_dir.join("staging"));
    anyhow::ensure!(config.verification_timeout_minutes >= 1, "verification_timeout_minutes must be at least 1");
    settings.verification_timeout_ms = config.verification_timeout_minutes * 60_000;
    settings.password_hash_slots = config.password_hash_slots;
    settings.password_queue_deadline_ms = config.password_queue_ms.max(1);
    anyhow::ensure!(config.push_delivery_timeout_secs >= 1, "push_delivery_timeout_secs must be at least 1");
    settings.delivery_timeout_ms =
        i64::try_from(config.push_delivery_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    settings.download_cap = (config.max_concurrent_downloads > 0).then_some(config.max_concurrent_downloads);
    let domain = Domain::new(db, Arc::new(SystemClock), Arc::new(store), settings);
    Ok(match geoip {
        Some(regions) => domain.with_geoip(Arc::new(regions)),
        None => domain,
    })
}

/// The configured GeoIP database; a file that cannot be used stops the start, rather than
/// leaving regions silently unfilled.
fn open_geoip(config: &Config) -> anyhow::Result<Option<MaxMindRegions>> {
    let Some(path) = &config.geoip_database else {
        return Ok(None);
    };
    let regions = MaxMindRegions::open(path).map_err(|e| {
        anyhow::anyhow!(
            "geoip_database: {e}; point it (or OTA_GEOIP_DATABASE) at a GeoIP2/GeoLite2 City or Country .mmdb file, or unset it"
        )
    })?;
    tracing::info!(
        path = %path.display(),
        database_type = regions.database_type(),
        nodes = regions.node_count(),
        "GeoIP database loaded; regions of devices without one come from it"
    );
    Ok(Some(regions))
}

/// The configured JWT secret, or one generated on first start and kept in the data directory.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        anyhow::ensure!(secret.len() >= 32, "jwt_secret must be at least 32 characters");
        return Ok(secret.as_bytes().to_vec());
    }
    let path = config.data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().as_bytes().to_vec());
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.as_bytes())?;
    Ok(secret.into_bytes())
}

async fn up(config: Config) -> anyhow::Result<()> {
    let domain = open_domain(&config)?;
    let first_login = bootstrap_admin(&domain, &config).await?;
    let listener = TcpListener::bind(&config.api_bind).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} for the API ({e}); set `api_bind` in the configuration file or OTA_API_BIND, e.g. OTA_API_BIND=0.0.0.0:8081",
            config.api_bind
        )
    })?;
    let addr = listener.local_addr()?;
    let jwt = JwtKeys::new(&jwt_secret(&config)?, chrono::Duration::minutes(config.session_ttl_minutes.max(1)));
    let settings = ApiSettings {
        cors_allowed_origins: config.cors_origins(),
        max_json_bytes: config.max_json_bytes,
        workers: config.api_workers,
        trusted_proxies: config.trusted_proxy_addrs()?,
    };
    let gateway = start_gateway(&config, domain.clone())?;
    let server = ota_api::serve(listener, domain, jwt, settings)?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    let base = format!("http://{host}:{}", addr.port());
    println!("OTA server is up.");
    println!("  database       {}", ota_domain::db::redact_password(&config.database_url()));
    println!("  data directory {}", config.data_dir.display());
    println!("  management API {base}/api/v1   (listening on {addr})");
    println!("  API docs       {base}/docs   (OpenAPI: {base}/api-docs/openapi.json)");
    println!(
        "  device HTTP    {}   (GAgent calls port 80 of `{}`; see the README)",
        gateway.http_addr, config.device_public_host
    );
    println!(
        "  device MQTT    {}   (provision hands out {}:{})",
        gateway.mqtt_addr,
        config.device_mqtt_host.as_deref().unwrap_or(&config.device_public_host),
        config.device_mqtt_port.unwrap_or(gateway.mqtt_addr.port())
    );
    println!("  broker         {}", gateway.broker);
    match first_login {
        Some((user, Some(password))) => {
            println!("  first admin    `{user}` with generated password: {password}");
            println!("                 (shown once; change it with POST /api/v1/auth/password)");
        }
        Some((user, None)) => println!("  first admin    `{user}` (password from OTA_ADMIN_PASSWORD)"),
        None => {}
    }
    println!("Log in:  curl -s -X POST {base}/api/v1/auth/login -H 'content-type: application/json' \\");
    println!("           -d '{{\"username\":\"<user>\",\"password\":\"<password>\"}}'");
    println!("  node id        {}", gateway.node);
    println!("Stop with Ctrl-C (or SIGTERM): sessions close and this node's devices show offline.");
    let handle = server.handle();
    let stop = async move {
        shutdown_signal().await;
        println!("stopping…");
        gateway.stop().await;
        handle.stop(true).await;
    };
    actix_rt::spawn(stop);
    server.await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The running gateway, as `up` sees it.
struct GatewayInfo {
    http_addr: std::net::SocketAddr,
    mqtt_addr: std::net::SocketAddr,
    broker: String,
    node: String,
    /// Asks the gateway thread to stop gracefully; it answers when done.
    stop: tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl GatewayInfo {
    /// Stops the gateway gracefully, waiting a bounded time for it.
    async fn stop(self) {
        let (done, stopped) = tokio::sync::oneshot::channel();
        if self.stop.send(done).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stopped).await;
        }
    }
}

/// Starts the device gateway on its own multi-threaded runtime (the API has actix's) and
/// keeps it running for the life of the process.
fn start_gateway(config: &Config, domain: Domain) -> anyhow::Result<GatewayInfo> {
    let node = config.node_id()?;
    let parse = |setting: &str, env: &str, value: &str| -> anyhow::Result<std::net::SocketAddr> {
        value
            .parse()
            .map_err(|e| anyhow::anyhow!("{setting} `{value}` is not an address ({e}); set `{setting}` or {env}"))
    };
    let settings = ota_gateway::GatewaySettings {
        http_bind: parse("device_http_bind", "OTA_DEVICE_HTTP_BIND", &config.device_http_bind)?,
        mqtt_bind: parse("device_mqtt_bind", "OTA_DEVICE_MQTT_BIND", &config.device_mqtt_bind)?,
        public_host: config.device_public_host.clone(),
        mqtt_public_host: config.device_mqtt_host.clone().unwrap_or_else(|| config.device_public_host.clone()),
        mqtt_public_port: config.device_mqtt_port,
        bus: config.bus()?,
        edge: ota_gateway::EdgeSettings {
            gateway_id: node.clone(),
            pace: std::time::Duration::from_millis(config.mqtt_pace_ms),
            ..Default::default()
        },
        http: Default::default(),
        push: ota_gateway::PushSettings { rate_per_second: config.push_rate, ..Default::default() },
        throttle: Default::default(),
        liveness: ota_gateway::LivenessSettings { lease: std::time::Duration::from_secs(config.gateway_lease_secs) },
    };
    let broker = match &settings.bus {
        ota_gateway::BusConfig::Embedded { .. } => "embedded (rumqttd in this process)".to_owned(),
        ota_gateway::BusConfig::External { host, port, .. } => format!("external mqtt://{host}:{port}"),
    };
    anyhow::ensure!(config.gateway_lease_secs >= 3, "gateway_lease_secs must be at least 3");
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
    std::thread::Builder::new().name("gateway".into()).spawn(move || {
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("cannot start the gateway runtime: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            match ota_gateway::Gateway::start(domain, settings).await {
                Ok(gateway) => {
                    let _ = tx.send(Ok((gateway.http_addr, gateway.mqtt_addr)));
                    if let Ok(done) = stop_rx.await {
                        gateway.shutdown().await;
                        let _ = done.send(());
                    } else {
                        std::future::pending::<()>().await;
                    }
                }
                Err(e) => {
                    let hint = match &e {
                        ota_gateway::GatewayError::Bind { setting, .. } => {
                            format!("; set `{setting}` or OTA_{}", setting.to_ascii_uppercase())
                        }
                        ota_gateway::GatewayError::Bus(_) => "; check `broker` / OTA_BROKER".to_owned(),
                        ota_gateway::GatewayError::Database(_) => "; check `database_url`".to_owned(),
                    };
                    let _ = tx.send(Err(anyhow::anyhow!("{e}{hint}")));
                }
            }
        });
    })?;
    let (http_addr, mqtt_addr) = rx.recv().map_err(|_| anyhow::anyhow!("the gateway thread ended"))??;
    Ok(GatewayInfo { http_addr, mqtt_addr, broker, node, stop })
}

/// On a database without users, creates the first admin: from configuration
/// (`OTA_ADMIN_USER` / `OTA_ADMIN_PASSWORD`) or with a generated password printed once.
async fn bootstrap_admin(domain: &Domain, config: &Config) -> anyhow::Result<Option<(String, Option<String>)>> {
    if !domain.has_no_users().await.map_err(|e| anyhow::anyhow!("{e}"))? {
        return Ok(None);
    }
    let user = config.admin_user.clone().unwrap_or_else(|| "admin".into());
    let (password, shown) = match &config.admin_password {
        Some(p) => (p.clone(), None),
        None => {
            let generated = hex::encode(rand::random::<[u8; 9]>());
            (generated.clone(), Some(generated))
        }
    };
    domain
        .create_admin(&config.admin_tenant, &user, &password)
        .await
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
    Ok(Some((user, shown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geoip_database_that_cannot_be_used_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        assert!(open_geoip(&config).unwrap().is_none());

        config.geoip_database = Some(dir.path().join("GeoLite2-City.mmdb"));
        let err = open_domain(&config).err().expect("a missing database is refused").to_string();
        assert!(err.starts_with("geoip_database: ") && err.contains("GeoLite2-City.mmdb"), "{err}");

        let garbage = dir.path().join("garbage.mmdb");
        std::fs::write(&garbage, b"not a database").unwrap();
        config.geoip_database = Some(garbage);
        let err = open_domain(&config).err().expect("an invalid database is refused").to_string();
        assert!(err.starts_with("geoip_database: ") && err.contains("not a MaxMind DB"), "{err}");
    }
}
