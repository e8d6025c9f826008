//! `ota-bench`: load benchmarks of the device plane over real loopback sockets.
//!
//! `ota-bench device-plane` runs the server (domain, gateway, embedded bus) in a child process
//! and the simulated devices in this one. A process may hold at most 20,000 open files on the
//! machines we measure on, and 10,000 device sessions cost one socket on each side, so one
//! process could not hold both ends. The child is this same binary, re-executed with the
//! hidden `serve` subcommand; it is driven by one-line commands on its stdin (see [`serve`]).

mod checks;
mod control;
mod device;
mod downloads;
mod exchange;
mod faults;
mod halt;
mod login;
mod peer;
mod plane;
mod report;
mod rules;
mod serve;
mod sessions;
mod simfleet;
mod storm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ota-bench", version, about = "Device-plane benchmarks of the OTA server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registrations, MQTT sessions, memory per session, checks and push fan-out.
    DevicePlane(plane::PlaneArgs),
    /// 1 MiB firmware downloads at 100 and 1,000 connections, against nginx with sendfile.
    Downloads(downloads::DownloadArgs),
    /// V4.1 `update_and_check` against nginx with a fixed reply of the same bytes, by wrk
    /// (fresh connection per request), at 64 and 1,000 clients.
    Checks(checks::ChecksArgs),
    /// Rule previews over a large registry (default 1,000,000 devices).
    RulesPreview(rules::PreviewArgs),
    /// A simulated fleet pushed by one rule from start to 100 % succeeded.
    Rollout(rules::RolloutArgs),
    /// The automatic halt of a rollout: 2,000 devices, 5 % failing, canary and waves; then
    /// exclude and resume to completion.
    Halt(halt::HaltArgs),
    /// A rollout over several `ota up` nodes while two are killed with kill -9 and restarted.
    Faults(faults::FaultArgs),
    /// A power-on storm over `ota up` nodes on PostgreSQL: every device online, once each.
    Storm(storm::StormArgs),
    /// 100,000 device sessions held across six gateway processes on PostgreSQL and a shared
    /// broker: none lost, memory per session, then one push to all of them.
    Sessions(sessions::SessionsArgs),
    /// 1,000 wrong logins at once from 50 addresses against 20 users: memory, answers, and the
    /// admin's right password from another address.
    LoginFlood(login::LoginFloodArgs),
    /// The API side of `login-flood` (started by it).
    #[command(hide = true)]
    LoginServe(login::LoginServeArgs),
    /// The simulated fleet of `rollout` (`ota sim`, started by it).
    #[command(hide = true)]
    Sim(Box<ota_sim::SimArgs>),
    /// The server side of `device-plane` (started by it; commands on stdin).
    #[command(hide = true)]
    Serve(serve::ServeArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTA_BENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // stdout of the server child carries the control protocol: logs go to stderr.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ota-bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::DevicePlane(args) => runtime.block_on(plane::run(args)),
        Command::Downloads(args) => runtime.block_on(downloads::run(args)),
        Command::Checks(args) => runtime.block_on(checks::run(args)),
        Command::RulesPreview(args) => runtime.block_on(rules::preview(args)),
        Command::Rollout(args) => runtime.block_on(rules::rollout(args)),
        Command::Faults(args) => runtime.block_on(faults::run(args)),
        Command::Storm(args) => runtime.block_on(storm::run(args)),
        Command::Sessions(args) => runtime.block_on(sessions::run(args)),
        Command::Halt(args) => runtime.block_on(halt::run(args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::LoginFlood(args) => runtime.block_on(login::run(args)),
        Command::LoginServe(args) => login::serve(args),
        Command::Sim(args) => runtime.block_on(async move { ota_sim::run(*args).await.map(|()| true) }),
    };
    // rumqttd's router threads never end and device tasks may still hold sockets: do not wait.
    runtime.shutdown_background();
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ota-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
