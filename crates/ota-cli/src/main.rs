//! `ota`: run the OTA server and administer it.

mod client;
mod config;
mod metrics;

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_api::{ApiSettings, JwtKeys};
use ota_domain::geoip::MaxMindRegions;
use ota_domain::store::s3::S3BlobStore;
use ota_domain::store::{BlobStore, FsBlobStore};
use ota_domain::{Db, Domain, DomainSettings, SystemClock};

use config::{Config, FirmwareStore, Role};

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
    Up {
        /// What this node runs: `all`, `api` (management API only) or `gateway` (device HTTP,
        /// MQTT edge and scheduler); default the `role` setting (OTA_ROLE), else `all`.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
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
        for warning in config::unknown_environment(std::env::vars()) {
            tracing::warn!("{warning}");
        }
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
    // Colour codes only for a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if config.log_format == "json" { builder.json().try_init() } else { builder.try_init() };
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Openapi => print_quietly(&serde_json::to_string_pretty(&ota_api::openapi())?),
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
            let domain = open_domain(&config).await?;
            let created =
                domain.create_admin(&tenant, &username, &password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created admin `{}` in tenant `{}`", created.username, created.tenant);
            Ok(())
        }
        Command::Up { role } => up(config, role).await,
        Command::Sim(_) => anyhow::bail!("`ota sim` runs before the configuration is loaded"),
        Command::Client(_) => anyhow::bail!("the client commands run before the configuration is loaded"),
    }
}

/// Writes `text` and a newline to standard output; a reader that went away
/// (`ota openapi | head`) ends the command quietly instead of with a panic.
fn print_quietly(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn open_db(config: &Config) -> anyhow::Result<Db> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    Ok(Db::connect(&config.database_url(), config.database_max_connections)?)
}

/// Connects, migrates and builds the domain.
async fn open_domain(config: &Config) -> anyhow::Result<Domain> {
    let geoip = open_geoip(config)?;
    let db = open_db(config)?;
    for name in db.migrate()? {
        tracing::info!(migration = %name, "applied migration");
    }
    let store = open_store(config).await?;
    let mut settings = DomainSettings::new(config.max_firmware_bytes, config.data_dir.join("staging"));
    anyhow::ensure!(config.verification_timeout_minutes >= 1, "verification_timeout_minutes must be at least 1");
    settings.verification_timeout_ms = config.verification_timeout_minutes * 60_000;
    settings.password_hash_slots = config.password_hash_slots;
    settings.password_queue_deadline_ms = config.password_queue_ms.max(1);
    anyhow::ensure!(config.push_delivery_timeout_secs >= 1, "push_delivery_timeout_secs must be at least 1");
    settings.delivery_timeout_ms =
        i64::try_from(config.push_delivery_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    settings.download_cap = (config.max_concurrent_downloads > 0).then_some(config.max_concurrent_downloads);
    let domain = Domain::new(db, Arc::new(SystemClock), store, settings);
    Ok(match geoip {
        Some(regions) => domain.with_geoip(Arc::new(regions)),
        None => domain,
    })
}

/// The configured firmware store. An S3 store is checked before the node starts (the bucket
/// is there, the credentials are accepted): a wrong setting stops the start, naming it.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    match config.firmware_store {
        FirmwareStore::Local => {
            let store = FsBlobStore::new(config.data_dir.join("firmware"))
                .with_context(|| format!("creating the firmware store under {}", config.data_dir.display()))?;
            Ok(Arc::new(store))
        }
        FirmwareStore::S3 => {
            let settings = config.s3_settings()?;
            let cache = settings.cache_dir.clone();
            let store = S3BlobStore::new(settings)?;
            store.check().await?;
            tracing::info!(store = ?store, cache = %cache.display(), "firmware in an S3-compatible store, cached on this node");
            Ok(Arc::new(store))
        }
    }
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

/// Says the node is stopping. Stdout may be gone by then (a supervisor or pipe that died):
/// `println!` would panic and skip the graceful stop that marks this node's devices offline,
/// so the line is written with its error ignored (the log has it too).
fn say_stopping() {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "stopping…");
    tracing::info!("stopping");
}

async fn up(mut config: Config, role: Option<Role>) -> anyhow::Result<()> {
    if let Some(role) = role {
        config.role = role;
    }
    check_role(&config)?;
    // Before anything is served: a SIGTERM that comes once devices can connect must find the
    // handler in place (before, one sent right after the start killed the node outright, and
    // its devices stayed online until its lease lapsed).
    let stop_signal = ShutdownSignal::register()?;
    // Every port first, then the database: a taken port changes nothing (in particular it
    // creates no first admin whose generated password would never be shown).
    let listeners = bind_all(&config)?;
    let domain = open_domain(&config).await?;
    let metrics = match listeners.metrics {
        Some(listener) => {
            let addr = listener.local_addr()?;
            actix_rt::spawn(metrics::serve(listener, domain.db.clone())?);
            Some(addr)
        }
        None => None,
    };
    let api = match listeners.api {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let jwt = JwtKeys::new(&jwt_secret(&config)?, chrono::Duration::minutes(config.session_ttl_minutes.max(1)));
            let settings = ApiSettings {
                cors_allowed_origins: config.cors_origins(),
                max_json_bytes: config.max_json_bytes,
                workers: config.api_workers,
                trusted_proxies: config.trusted_proxy_addrs()?,
            };
            Some((addr, listener, jwt, settings))
        }
        None => None,
    };
    let gateway = start_gateway(&config, domain.clone(), listeners.devices)?;
    let (server, base) = match api {
        Some((addr, listener, jwt, settings)) => {
            let server = ota_api::serve(listener, domain.clone(), jwt, settings)?;
            let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
            (Some(server), Some((addr, format!("http://{host}:{}", addr.port()))))
        }
        None => (None, None),
    };
    // Only now, with everything listening, the first admin (on nodes that serve the API).
    let first_login = if config.role.serves_api() { bootstrap_admin(&domain, &config).await? } else { None };
    println!("OTA server is up (role {}).", config.role.name());
    println!("  database       {}", ota_domain::db::redact_password(&config.database_url()));
    println!("  data directory {}", config.data_dir.display());
    if let Some((addr, base)) = &base {
        println!("  management API {base}/api/v1   (listening on {addr})");
        println!("  API docs       {base}/docs   (OpenAPI: {base}/api-docs/openapi.json)");
    }
    if let Some((http_addr, mqtt_addr)) = gateway.devices {
        println!(
            "  device HTTP    {http_addr}   (GAgent calls port 80 of `{}`; see the README)",
            config.device_public_host
        );
        println!(
            "  device MQTT    {mqtt_addr}   (provision hands out {}:{})",
            config.device_mqtt_host.as_deref().unwrap_or(&config.device_public_host),
            config.device_mqtt_port.unwrap_or(mqtt_addr.port())
        );
    }
    if gateway.devices.is_some() {
        println!("  broker         {}", gateway.broker);
    } else {
        println!("  broker         {}   (pushes decided here go out through it)", gateway.broker);
    }
    match first_login {
        Some((user, Some(password))) => {
            println!("  first admin    `{user}` with generated password: {password}");
            println!("                 (shown once; change it with POST /api/v1/auth/password)");
        }
        Some((user, None)) => println!("  first admin    `{user}` (password from OTA_ADMIN_PASSWORD)"),
        None => {}
    }
    if let Some((_, base)) = &base {
        println!(
            "Log in:  curl -sS --fail-with-body -X POST {base}/api/v1/auth/login -H 'content-type: application/json' \\"
        );
        println!("           -d '{{\"username\":\"<user>\",\"password\":\"<password>\"}}'");
    }
    if let Some(addr) = metrics {
        println!("  metrics        http://{addr}/metrics");
    }
    if let Some(node) = &gateway.node {
        println!("  node id        {node}");
    }
    if config.role.serves_devices() {
        println!("Stop with Ctrl-C (or SIGTERM): sessions close and this node's devices show offline.");
    } else {
        println!("Stop with Ctrl-C (or SIGTERM).");
    }
    match server {
        Some(server) => {
            let handle = server.handle();
            actix_rt::spawn(async move {
                stop_signal.recv().await;
                say_stopping();
                gateway.stop().await;
                handle.stop(true).await;
            });
            server.await?;
        }
        None => {
            stop_signal.recv().await;
            say_stopping();
            gateway.stop().await;
        }
    }
    Ok(())
}

/// A node that does not run everything shares the work with others through a broker they
/// all reach; an embedded broker nobody else can connect to would cut it off.
fn check_role(config: &Config) -> anyhow::Result<()> {
    if config.role != Role::All && config.broker.trim() == "embedded" && config.broker_listen.is_none() {
        anyhow::bail!(
            "role `{}` works with other nodes through a shared broker, and `broker` is `embedded` with no listener: \
             set `broker` (OTA_BROKER) to mqtt://host:port of a broker every node uses \
             (or give one node `broker_listen` and point the others' `broker` at it)",
            config.role.name()
        );
    }
    Ok(())
}

/// What each listener is for, in error messages.
fn purpose(setting: &str) -> &'static str {
    match setting {
        "api_bind" => "the management API",
        "device_http_bind" => "the device HTTP",
        "device_mqtt_bind" => "the device MQTT edge",
        "broker_listen" => "the embedded broker's listener",
        "metrics_bind" => "the Prometheus metrics",
        _ => "a listener",
    }
}

/// One port that cannot be used, with the setting that moves it.
fn bind_problem(setting: &str, addr: &str, cause: &dyn std::fmt::Display) -> String {
    format!(
        "cannot listen on {addr} for {} ({cause}): change `{setting}` in the configuration file or {}",
        purpose(setting),
        Config::env_name(setting)
    )
}

fn parse_addr(setting: &str, value: &str) -> Result<std::net::SocketAddr, String> {
    value.parse().map_err(|e| {
        format!("`{setting}` = `{value}` is not an address ({e}): set `{setting}` or {}", Config::env_name(setting))
    })
}

/// The listeners this node's role needs, bound before anything else.
struct Listeners {
    api: Option<TcpListener>,
    metrics: Option<TcpListener>,
    devices: Option<ota_gateway::DeviceListeners>,
}

/// Binds every port the role needs, and reports every one that cannot be used at once.
fn bind_all(config: &Config) -> anyhow::Result<Listeners> {
    let mut problems = Vec::new();
    let api = if config.role.serves_api() {
        TcpListener::bind(&config.api_bind)
            .map_err(|e| problems.push(bind_problem("api_bind", &config.api_bind, &e)))
            .ok()
    } else {
        None
    };
    let devices = if config.role.serves_devices() {
        let http = parse_addr("device_http_bind", &config.device_http_bind);
        let mqtt = parse_addr("device_mqtt_bind", &config.device_mqtt_bind);
        match (http, mqtt) {
            (Ok(http), Ok(mqtt)) => match ota_gateway::DeviceListeners::bind(http, mqtt) {
                Ok(listeners) => Some(listeners),
                Err(errors) => {
                    for e in errors {
                        problems.push(match e {
                            ota_gateway::GatewayError::Bind { setting, addr, cause } => {
                                bind_problem(setting, &addr.to_string(), &cause)
                            }
                            other => other.to_string(),
                        });
                    }
                    None
                }
            },
            (http, mqtt) => {
                problems.extend([http.err(), mqtt.err()].into_iter().flatten());
                None
            }
        }
    } else {
        None
    };
    // Every role: a node's metrics are its own.
    let metrics = match config.metrics_bind.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
        Some(bind) => match parse_addr("metrics_bind", bind) {
            Ok(addr) => TcpListener::bind(addr).map_err(|e| problems.push(bind_problem("metrics_bind", bind, &e))).ok(),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        None => None,
    };
    // rumqttd binds its listener itself, later: check now that the port is free.
    if config.broker.trim() == "embedded"
        && let Some(listen) = &config.broker_listen
    {
        match parse_addr("broker_listen", listen) {
            Ok(addr) if addr.port() != 0 => {
                if let Err(e) = TcpListener::bind(addr) {
                    problems.push(bind_problem("broker_listen", listen, &e));
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} listener{} cannot start, so nothing was started or changed:\n  - {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  - ")
        );
    }
    Ok(Listeners { api, metrics, devices })
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send), listened for from the moment it
/// is registered (tokio's `ctrl_c()` listens only once first polled).
struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn register() -> anyhow::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind| signal(kind).context("cannot listen for SIGTERM / SIGINT");
            Ok(ShutdownSignal { term: listen(SignalKind::terminate())?, interrupt: listen(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The device side of this node, as `up` sees it: a gateway (role `all` or `gateway`), or
/// only the broker link pushes go out through (role `api`).
struct GatewayInfo {
    /// Device HTTP and MQTT edge addresses, when this node serves devices.
    devices: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    broker: String,
    /// The node id, when this node serves devices.
    node: Option<String>,
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

type Started = anyhow::Result<Option<(std::net::SocketAddr, std::net::SocketAddr)>>;

/// Starts the device gateway on `listeners` (or, without them, only the broker link the API
/// pushes through) on its own multi-threaded runtime (the API has actix's), kept running for
/// the life of the process.
fn start_gateway(
    config: &Config,
    domain: Domain,
    listeners: Option<ota_gateway::DeviceListeners>,
) -> anyhow::Result<GatewayInfo> {
    let bus = config.bus()?;
    let broker = match &bus {
        ota_gateway::BusConfig::Embedded { .. } => "embedded (rumqttd in this process)".to_owned(),
        ota_gateway::BusConfig::External { host, port, .. } => format!("external mqtt://{host}:{port}"),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Started>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
    let Some(listeners) = listeners else {
        let public_host = config.device_public_host.clone();
        std::thread::Builder::new().name("push-link".into()).spawn(move || {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot start the broker link's runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match ota_gateway::attach_push_link(&domain, bus, public_host).await {
                    Ok(_bus) => {
                        let _ = tx.send(Ok(None));
                        if let Ok(done) = stop_rx.await {
                            let _ = done.send(());
                        } else {
                            std::future::pending::<()>().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("{e}; check `broker` / OTA_BROKER")));
                    }
                }
            });
        })?;
        rx.recv().map_err(|_| anyhow::anyhow!("the broker link thread ended"))??;
        return Ok(GatewayInfo { devices: None, broker, node: None, stop });
    };
    let node = config.node_id()?;
    let addr = |setting: &str, value: &str| parse_addr(setting, value).map_err(anyhow::Error::msg);
    let settings = ota_gateway::GatewaySettings {
        http_bind: addr("device_http_bind", &config.device_http_bind)?,
        mqtt_bind: addr("device_mqtt_bind", &config.device_mqtt_bind)?,
        public_host: config.device_public_host.clone(),
        mqtt_public_host: config.device_mqtt_host.clone().unwrap_or_else(|| config.device_public_host.clone()),
        mqtt_public_port: config.device_mqtt_port,
        bus,
        edge: ota_gateway::EdgeSettings {
            gateway_id: node.clone(),
            pace: std::time::Duration::from_millis(config.mqtt_pace_ms),
            ..Default::default()
        },
        http: Default::default(),
        push: ota_gateway::PushSettings { rate_per_second: config.push_rate, ..Default::default() },
        throttle: Default::default(),
        liveness: ota_gateway::LivenessSettings { lease: std::time::Duration::from_secs(config.gateway_lease_secs) },
        admission: ota_gateway::admission::AdmissionSettings {
            device_calls_in_flight: config.device_calls_in_flight,
            mqtt_logins_in_flight: config.mqtt_logins_in_flight,
            wait: std::time::Duration::from_millis(config.admission_wait_ms),
        },
    };
    anyhow::ensure!(config.gateway_lease_secs >= 3, "gateway_lease_secs must be at least 3");
    std::thread::Builder::new().name("gateway".into()).spawn(move || {
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("cannot start the gateway runtime: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            match ota_gateway::Gateway::start_on(domain, settings, listeners).await {
                Ok(gateway) => {
                    let _ = tx.send(Ok(Some((gateway.http_addr, gateway.mqtt_addr))));
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
                            format!("; set `{setting}` or {}", Config::env_name(setting))
                        }
                        ota_gateway::GatewayError::Bus(_) => "; check `broker` / OTA_BROKER".to_owned(),
                        ota_gateway::GatewayError::Database(_) => "; check `database_url`".to_owned(),
                    };
                    let _ = tx.send(Err(anyhow::anyhow!("{e}{hint}")));
                }
            }
        });
    })?;
    let devices = rx.recv().map_err(|_| anyhow::anyhow!("the gateway thread ended"))??;
    Ok(GatewayInfo { devices, broker, node: Some(node), stop })
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

    #[tokio::test]
    async fn geoip_database_that_cannot_be_used_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        assert!(open_geoip(&config).unwrap().is_none());

        config.geoip_database = Some(dir.path().join("GeoLite2-City.mmdb"));
        let err = open_domain(&config).await.err().expect("a missing database is refused").to_string();
        assert!(err.starts_with("geoip_database: ") && err.contains("GeoLite2-City.mmdb"), "{err}");

        let garbage = dir.path().join("garbage.mmdb");
        std::fs::write(&garbage, b"not a database").unwrap();
        config.geoip_database = Some(garbage);
        let err = open_domain(&config).await.err().expect("an invalid database is refused").to_string();
        assert!(err.starts_with("geoip_database: ") && err.contains("not a MaxMind DB"), "{err}");
    }
}
