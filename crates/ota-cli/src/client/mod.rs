//! `ota` as a client of the management API, for pipelines and operators.
//!
//! Every command takes `--json` (the API's own objects on stdout) and `--quiet` (only the id
//! of what was created or shown, for `$(…)`), and exits with the code of its error class
//! ([`error::Class`]). Steps a script reruns are safe: creating requests carry an
//! `Idempotency-Key` derived from what they create ([`keys`]), and a step whose work is already
//! done (a rule already pushing or completed, firmware already verified) answers the current
//! state as success.

mod commands;
pub mod credentials;
pub mod error;
pub mod http;
pub mod keys;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use error::{Class, CliError, CliResult};

/// Options of every client command.
#[derive(Args, Clone, Debug, Default)]
pub struct Opts {
    /// Server URL, e.g. `http://ota.example.com:8080` (default: the one `ota login` stored).
    #[arg(long, global = true, env = "OTA_URL")]
    pub url: Option<String>,
    /// An API token (`ota_…`) or a login session (default: the one `ota login` stored).
    #[arg(long, global = true, env = "OTA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON objects on stdout (errors as JSON on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only the id of what the command created or showed (nothing for actions).
    #[arg(long, short, global = true, conflicts_with = "json")]
    pub quiet: bool,
}

/// The exit codes, in every client command's `--help` (and the README).
const EXIT_CODES: &str = "Exit codes: 0 done (or already done); 1 local (file, checksum); 2 usage (command line, \
no URL or credentials); 3 authentication or permission (401/403); 4 not found (404); 5 refused in the \
current state (409; the server's code is printed); 6 invalid request (400/413/415); 7 server or \
network (5xx, 429, unreachable); 8 what was waited for ended badly (rule halted/stopped/cancelled, \
verification failed/expired/cancelled); 9 --timeout passed.";

/// The client commands (`ota products …`, `ota rules …`, …).
#[derive(Subcommand, Debug)]
#[command(after_long_help = EXIT_CODES)]
pub enum ClientCommand {
    /// Store a server URL and credentials for the client commands (0600 file in the user's
    /// config directory).
    Login(LoginArgs),
    /// Forget what `ota login` stored.
    Logout {
        #[command(flatten)]
        opts: Opts,
    },
    /// Products: create, list, show.
    #[command(after_long_help = EXIT_CODES)]
    Products {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        command: ProductCommand,
    },
    /// Firmware: upload, list, show, download, delete.
    #[command(after_long_help = EXIT_CODES)]
    Firmware {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Verify firmware on one test device: start, wait, confirm.
    #[command(after_long_help = EXIT_CODES)]
    Verification {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        command: VerificationCommand,
    },
    /// Push rules: create, preview, start, watch, rollout control, results.
    #[command(after_long_help = EXIT_CODES)]
    Rules {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Devices: list, import.
    #[command(after_long_help = EXIT_CODES)]
    Devices {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        command: DeviceCommand,
    },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub opts: Opts,
    /// Log in with this user name (password from standard input) and store a new API token
    /// with the scopes read, write and push; without it, the token given by --token/OTA_TOKEN
    /// (or read from standard input) is checked and stored.
    #[arg(long)]
    pub username: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ProductCommand {
    /// Create a product; with --product-key, a rerun that finds the product with that key and
    /// name answers it.
    Create {
        #[arg(long)]
        name: String,
        /// 32 lowercase hex characters; generated when absent.
        #[arg(long)]
        product_key: Option<String>,
        #[arg(long)]
        product_secret: Option<String>,
    },
    /// List products.
    List(PageArgs),
    /// Show one product.
    Show { product_key: String },
}

#[derive(Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Every page, not just one.
    #[arg(long, conflicts_with = "page")]
    pub all: bool,
    #[arg(long)]
    pub page: Option<u32>,
    /// Items per page, 1–200.
    #[arg(long)]
    pub per_page: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwType {
    Wifi,
    Mcu,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    #[value(name = "V1V3")]
    V1v3,
    #[value(name = "V4")]
    V4,
    #[value(name = "V4.1")]
    V41,
}

impl Method {
    pub fn wire(self) -> &'static str {
        match self {
            Method::V1v3 => "V1V3",
            Method::V4 => "V4",
            Method::V41 => "V4.1",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum FirmwareCommand {
    /// Upload a firmware file (progress on a terminal). A rerun with the same file and fields
    /// answers the firmware of the first run.
    Upload {
        product_key: String,
        file: PathBuf,
        /// Default: the file name without its extension.
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "type", value_enum, default_value = "wifi")]
        fw_type: FwType,
        #[arg(long, value_enum)]
        push_method: Method,
        /// V4: of the devices to upgrade; V4.1: of the image. Read from an official
        /// `GAgent_<hw8>_<sw8>_<YYMMDDHH>.bin` name when absent.
        #[arg(long)]
        hard_version: Option<String>,
        #[arg(long)]
        soft_version: Option<String>,
        /// Instead of the key derived from the file and fields.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List a product's firmware, newest first.
    List {
        product_key: String,
        #[arg(long)]
        verified: Option<bool>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one firmware.
    Show { id: i64 },
    /// Download the exact bytes (checked against the server's SHA-256).
    Download {
        id: i64,
        /// Where to write; `-` for standard output; default: the firmware's file name.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Delete firmware (refused while a rule of it is pushing).
    Delete { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum VerificationCommand {
    /// Push the firmware to one online test device. Already verified firmware, or a
    /// verification of it already running on that device, answers its current state.
    Start {
        firmware_id: i64,
        #[arg(long)]
        mac: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Wait until the device reported the new version (awaiting_confirmation) or the firmware
    /// is verified; failed, expired or cancelled exit 8.
    Wait {
        firmware_id: i64,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        interval: Duration,
    },
    /// Confirm the result (verifies and locks the firmware); already verified answers so.
    Confirm {
        firmware_id: i64,
        /// Confirm that the device does NOT run it fine: the verification fails.
        #[arg(long)]
        not_stable: bool,
    },
    /// Show the firmware's latest verification.
    Show { firmware_id: i64 },
    /// Cancel a running verification.
    Cancel { firmware_id: i64 },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    Regions,
    Macs,
}

/// A rule from flags (or a JSON file of the API's `RuleBody`).
#[derive(Args, Debug, Clone)]
pub struct RuleSpec {
    /// The whole rule as the API's JSON body (`-` for standard input); excludes the flags.
    #[arg(long, conflicts_with_all = ["name", "target", "regions", "macs", "mac_list_id", "old_versions", "start", "end", "days", "window", "policy"])]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// With --target regions (repeatable): `country/province/city` or `province-city`.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// With --target macs: MACs separated by commas, spaces or newlines.
    #[arg(long)]
    pub macs: Option<String>,
    /// With --target macs: an uploaded MAC list.
    #[arg(long)]
    pub mac_list_id: Option<i64>,
    /// Versions the devices must run (repeatable or comma-separated).
    #[arg(long = "old-version", value_delimiter = ',')]
    pub old_versions: Vec<String>,
    /// First day, YYYY-MM-DD (UTC); default today.
    #[arg(long)]
    pub start: Option<String>,
    /// Last day, YYYY-MM-DD (UTC); default start + --days - 1.
    #[arg(long, conflicts_with = "days")]
    pub end: Option<String>,
    /// Days the period lasts when --end is absent.
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    /// Daily window in whole UTC hours, `START-END` (e.g. `22-2`); default all day.
    #[arg(long, default_value = "0-24")]
    pub window: String,
    /// The rollout policy as JSON (the API's `RolloutPolicy`), inline or `@file`.
    #[arg(long)]
    pub policy: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFilter {
    All,
    Succeeded,
    NotSucceeded,
    Failed,
    InFlight,
    Excluded,
}

#[derive(Subcommand, Debug)]
pub enum RuleCommand {
    /// Create a rule (not started) for a firmware; a rerun with the same firmware and name (or
    /// the same body, without a name) answers the first rule.
    Create {
        firmware_id: i64,
        #[command(flatten)]
        spec: RuleSpec,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// What a rule (or, with --firmware, a draft from the flags) would push to now.
    Preview {
        #[arg(required_unless_present = "firmware", conflicts_with = "firmware")]
        rule_id: Option<i64>,
        #[arg(long)]
        firmware: Option<i64>,
        #[command(flatten)]
        spec: RuleSpec,
    },
    /// Show a rule.
    Show { rule_id: i64 },
    /// List the tenant's rules.
    List {
        #[arg(long)]
        product_key: Option<String>,
        #[arg(long)]
        firmware_id: Option<i64>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Start (or restart a stopped) rule; running this is the confirmation that the firmware
    /// is stable and the terms accepted. A rule already pushing or completed answers its state.
    Start { rule_id: i64 },
    /// Stop a rule (the console's stop; `start` again re-queues).
    Stop { rule_id: i64 },
    /// Follow a rule until it completes (exit 0) or halts, stops or is cancelled (exit 8):
    /// a progress bar on a terminal, JSON lines otherwise. Progress comes from the rule's
    /// server-sent events (resumed when cut); `--interval` is the polling period used only
    /// when the server refuses a stream.
    Watch {
        rule_id: i64,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        interval: Duration,
    },
    /// The rule's targets and how each fared.
    Devices {
        rule_id: i64,
        #[arg(long, value_enum)]
        filter: Option<DeviceFilter>,
        #[arg(long)]
        wave: Option<u32>,
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// The rule's targets as CSV.
    Export {
        rule_id: i64,
        /// Default: standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Pause a pushing rule.
    Pause { rule_id: i64 },
    /// Resume a paused or halted rule.
    Resume { rule_id: i64 },
    /// Cancel a rule for good.
    Cancel { rule_id: i64 },
    /// Start the next wave now.
    Advance { rule_id: i64 },
    /// Take devices out of a paused or halted rule.
    Exclude {
        rule_id: i64,
        #[arg(long, required_unless_present = "mac_list_id")]
        macs: Option<String>,
        #[arg(long, conflicts_with = "macs")]
        mac_list_id: Option<i64>,
    },
    /// What the rule would do if it started now, per wave.
    Preflight {
        rule_id: i64,
        #[arg(long)]
        offline_days: Option<u32>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List a product's devices.
    List {
        product_key: String,
        #[arg(long)]
        online: Option<bool>,
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Import the hosted console's device list (CSV or JSON); a rerun of the same file answers
    /// the first report.
    Import {
        product_key: String,
        file: PathBuf,
        /// Default: from the file's extension (`.json` → json, else csv).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

impl ClientCommand {
    fn opts(&self) -> &Opts {
        match self {
            ClientCommand::Login(a) => &a.opts,
            ClientCommand::Logout { opts }
            | ClientCommand::Products { opts, .. }
            | ClientCommand::Firmware { opts, .. }
            | ClientCommand::Verification { opts, .. }
            | ClientCommand::Rules { opts, .. }
            | ClientCommand::Devices { opts, .. } => opts,
        }
    }
}

/// Runs a client command and returns the process's exit code.
pub fn main(command: ClientCommand) -> i32 {
    let opts = command.opts().clone();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::from)
        .and_then(|rt| rt.block_on(commands::run(command)));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            if opts.json {
                eprintln!("{}", e.json());
            } else {
                eprintln!("{}", e.human());
            }
            e.class.exit_code()
        }
    }
}

/// `90`, `30s`, `10m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 10m, 2h)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("`{text}`: use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// The server and credentials: flags/environment first, then what `ota login` stored.
fn connect(opts: &Opts) -> CliResult<http::Api> {
    let stored = if opts.url.is_none() || opts.token.is_none() { credentials::load()? } else { None };
    let url = opts.url.clone().or_else(|| stored.as_ref().map(|s| s.url.clone())).ok_or_else(|| {
        CliError::new(Class::Usage, "no server URL: set OTA_URL (or --url), or run `ota login --url …`")
    })?;
    let token =
        opts.token.clone().or_else(|| stored.as_ref().map(|s| s.token.clone())).ok_or_else(|| {
            CliError::new(Class::Usage, "no credentials: set OTA_TOKEN (or --token), or run `ota login`")
        })?;
    http::Api::new(&url, &token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_command_line_parses_and_options_go_anywhere() {
        let cli = Cli::try_parse_from(["ota", "rules", "watch", "7", "--json", "--timeout", "5m"]).unwrap();
        let ClientCommand::Rules { opts, command: RuleCommand::Watch { rule_id, timeout, .. } } = cli.command else {
            panic!("not a watch")
        };
        assert!(opts.json);
        assert_eq!((rule_id, timeout), (7, Some(Duration::from_secs(300))));
        assert!(Cli::try_parse_from(["ota", "rules", "create", "1", "--file", "r.json", "--name", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["ota", "firmware", "upload", "pk", "f.bin"]).is_err(),
            "--push-method is required"
        );
        assert!(
            Cli::try_parse_from(["ota", "firmware", "--quiet", "upload", "pk", "f.bin", "--push-method", "V4.1"])
                .is_ok()
        );
    }
}
