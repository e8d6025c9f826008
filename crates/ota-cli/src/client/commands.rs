//! What each client command does.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use ota_wire::ErrorCode;
use ota_wire::dto::{
    ConfirmVerificationRequest, CreateProductRequest, CreateTokenRequest, DeviceImportReport, DeviceView, FirmwareView,
    LoginRequest, LoginResponse, Page, ProductView, Scope, StartVerificationRequest, VerificationState,
    VerificationView, WhoAmI,
};
use ota_wire::rollout::{ExcludeRequest, ExcludeResult, Preflight};
use ota_wire::rules::{
    DailyWindow, Period, RolloutPolicy, RuleBody, RuleDeviceView, RulePreview, RuleStarted, RuleStatus, RuleView,
    StartRuleRequest, TargetKind,
};
use reqwest::Method as HttpMethod;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::{Class, CliError, CliResult};
use super::http::Api;
use super::watch::{self, Display, EventSource, status_name};
use super::*;

pub async fn run(command: ClientCommand) -> CliResult<()> {
    match command {
        ClientCommand::Login(args) => login(args).await,
        ClientCommand::Logout { opts } => {
            let removed = credentials::remove()?;
            let shown = removed.as_ref().map(|p| p.display().to_string());
            emit(&opts, &serde_json::json!({ "removed": shown }), shown.clone().unwrap_or_default(), || match &shown {
                Some(path) => format!("removed {path}"),
                None => "nothing stored".to_owned(),
            })
        }
        ClientCommand::Products { opts, command } => products(&connect(&opts)?, &opts, command).await,
        ClientCommand::Firmware { opts, command } => firmware(&connect(&opts)?, &opts, command).await,
        ClientCommand::Verification { opts, command } => verification(&connect(&opts)?, &opts, command).await,
        ClientCommand::Rules { opts, command } => rules(&connect(&opts)?, &opts, command).await,
        ClientCommand::Devices { opts, command } => devices(&connect(&opts)?, &opts, command).await,
    }
}

/// Prints an object: its JSON with `--json`, its id with `--quiet`, else a line for people.
fn emit<T: Serialize>(
    opts: &Opts,
    value: &T,
    id: impl std::fmt::Display,
    human: impl FnOnce() -> String,
) -> CliResult<()> {
    if opts.json {
        let text = serde_json::to_string(value).map_err(|e| CliError::new(Class::Local, e.to_string()))?;
        println!("{text}");
    } else if opts.quiet {
        println!("{id}");
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn query<Q: Serialize>(q: &Q) -> String {
    match serde_urlencoded::to_string(q) {
        Ok(s) if !s.is_empty() => format!("?{s}"),
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct PageQuery {
    page: Option<u32>,
    per_page: Option<u32>,
}

/// One page, or every page with `--all` (as one list). `filters` is a query string without `?`.
async fn pages<T: DeserializeOwned + Serialize>(
    api: &Api,
    path: &str,
    filters: &str,
    page: &PageArgs,
) -> CliResult<Page<T>> {
    let url = |page: Option<u32>, per_page: Option<u32>| {
        let paging = query(&PageQuery { page, per_page }).trim_start_matches('?').to_owned();
        let q: Vec<&str> = [paging.as_str(), filters].into_iter().filter(|s| !s.is_empty()).collect();
        if q.is_empty() { path.to_owned() } else { format!("{path}?{}", q.join("&")) }
    };
    if !page.all {
        return api.get(&url(page.page, page.per_page)).await;
    }
    let per_page = page.per_page.unwrap_or(200);
    let mut all: Page<T> = Page { items: Vec::new(), total: 0, page: 1, per_page };
    for n in 1.. {
        let one: Page<T> = api.get(&url(Some(n), Some(per_page))).await?;
        let done = one.items.len() < per_page as usize;
        all.total = one.total;
        all.items.extend(one.items);
        if done || all.items.len() as i64 >= all.total {
            break;
        }
    }
    all.per_page = all.items.len() as u32;
    Ok(all)
}

fn lines<T: Serialize>(opts: &Opts, value: &T, ids: Vec<String>, rows: Vec<String>) -> CliResult<()> {
    if opts.json {
        let text = serde_json::to_string(value).map_err(|e| CliError::new(Class::Local, e.to_string()))?;
        println!("{text}");
    } else if opts.quiet {
        ids.iter().for_each(|id| println!("{id}"));
    } else {
        rows.iter().for_each(|row| println!("{row}"));
    }
    Ok(())
}

// --- login ---

async fn login(args: LoginArgs) -> CliResult<()> {
    let opts = &args.opts;
    let url = opts.url.clone().ok_or_else(|| CliError::new(Class::Usage, "give the server with --url (or OTA_URL)"))?;
    let token = match (&args.username, &opts.token) {
        (Some(username), _) => {
            let password = read_stdin_line("password")?;
            let anonymous = Api::new(&url, "")?;
            let session: LoginResponse =
                anonymous.post("/auth/login", &LoginRequest { username: username.clone(), password }).await?;
            let api = Api::new(&url, &session.token)?;
            let request = CreateTokenRequest {
                name: "ota login".into(),
                scopes: vec![Scope::Read, Scope::Write, Scope::Push],
                expires_in_days: None,
            };
            let created: serde_json::Value = api.post("/tokens", &request).await?;
            created["secret"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| CliError::new(Class::Server, "the token the server created has no secret"))?
        }
        (None, Some(token)) => token.clone(),
        (None, None) => read_stdin_line("token")?,
    };
    let api = Api::new(&url, &token)?;
    let me: WhoAmI = api.get("/auth/me").await?;
    let path = credentials::save(&credentials::Stored { url: api.base().to_owned(), token })?;
    emit(opts, &me, &me.username, || {
        format!(
            "logged in to {} as `{}` of tenant `{}`; stored in {}",
            api.base(),
            me.username,
            me.tenant,
            path.display()
        )
    })
}

fn read_stdin_line(what: &str) -> CliResult<String> {
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(CliError::new(Class::Usage, format!("no {what} on standard input")));
    }
    Ok(line)
}

// --- products ---

fn product_line(p: &ProductView) -> String {
    format!("{}  {}  (created {})", p.product_key, p.name, p.created_at.format("%Y-%m-%d"))
}

async fn products(api: &Api, opts: &Opts, command: ProductCommand) -> CliResult<()> {
    match command {
        ProductCommand::Create { name, product_key, product_secret } => {
            let request = CreateProductRequest { name: name.clone(), product_key: product_key.clone(), product_secret };
            let created: CliResult<ProductView> = api.post("/products", &request).await;
            let (product, existed) = match (created, &product_key) {
                (Err(e), Some(key)) if e.is(ErrorCode::ProductKeyTaken) => {
                    let existing: ProductView = api.get(&format!("/products/{key}")).await.map_err(|_| e)?;
                    if existing.name != name {
                        return Err(CliError::new(
                            Class::Refused,
                            format!("product {key} exists with the name `{}`, not `{name}`", existing.name),
                        ));
                    }
                    (existing, true)
                }
                (other, _) => (other?, false),
            };
            let note = if existed { " (already there)" } else { "" };
            emit(opts, &product, &product.product_key, || format!("product {}{note}", product_line(&product)))
        }
        ProductCommand::List(page) => {
            let list: Page<ProductView> = pages(api, "/products", "", &page).await?;
            let ids = list.items.iter().map(|p| p.product_key.clone()).collect();
            let rows = list.items.iter().map(product_line).collect();
            lines(opts, &list, ids, rows)
        }
        ProductCommand::Show { product_key } => {
            let p: ProductView = api.get(&format!("/products/{product_key}")).await?;
            emit(opts, &p, &p.product_key, || product_line(&p))
        }
    }
}

// --- firmware ---

fn firmware_line(f: &FirmwareView) -> String {
    let versions = [f.hard_version.as_deref(), f.soft_version.as_deref()].into_iter().flatten().collect::<Vec<_>>();
    format!(
        "firmware {}  `{}`  {:?} {}{}  {} bytes  md5 {}  {}{}",
        f.id,
        f.name,
        f.fw_type,
        serde_json::to_value(f.push_method).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        if versions.is_empty() { String::new() } else { format!(" {}", versions.join("/")) },
        f.size,
        f.md5,
        if f.verified { "verified" } else { "not verified" },
        f.fid.map(|fid| format!("  fid {fid}")).unwrap_or_default(),
    )
}

async fn firmware(api: &Api, opts: &Opts, command: FirmwareCommand) -> CliResult<()> {
    match command {
        FirmwareCommand::Upload {
            product_key,
            file,
            name,
            fw_type,
            push_method,
            hard_version,
            soft_version,
            idempotency_key,
        } => {
            let bytes = tokio::fs::read(&file)
                .await
                .map_err(|e| CliError::new(Class::Local, format!("cannot read {}: {e}", file.display())))?;
            let file_name =
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "firmware.bin".into());
            let name = name.unwrap_or_else(|| {
                Path::new(&file_name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or(file_name.clone())
            });
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let fw_type = match fw_type {
                FwType::Wifi => "wifi",
                FwType::Mcu => "mcu",
            };
            let fields = [
                ("name", Some(name.as_str())),
                ("type", Some(fw_type)),
                ("push_method", Some(push_method.wire())),
                ("hard_version", hard_version.as_deref()),
                ("soft_version", soft_version.as_deref()),
            ];
            let key = idempotency_key.unwrap_or_else(|| keys::upload(&product_key, &sha256, &file_name, &fields));
            let mut form = reqwest::multipart::Form::new();
            for (field, value) in fields {
                if let Some(value) = value {
                    form = form.text(field, value.to_owned());
                }
            }
            let bar = (!opts.json && !opts.quiet && std::io::stderr().is_terminal()).then(|| {
                let bar = indicatif::ProgressBar::new(bytes.len() as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "uploading {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(file_name.clone());
                bar
            });
            let total = bytes.len() as u64;
            let progress = bar.clone();
            let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
            let stream = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
                if let Some(bar) = &progress {
                    bar.inc(chunk.len() as u64);
                }
                Ok::<_, std::io::Error>(chunk)
            }));
            let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), total)
                .file_name(file_name.clone())
                .mime_str("application/octet-stream")
                .map_err(|e| CliError::new(Class::Local, e.to_string()))?;
            form = form.part("file", part);
            let request = api
                .request(HttpMethod::POST, &format!("/products/{product_key}/firmware"))
                .header("Idempotency-Key", &key)
                .multipart(form);
            let sent = api.send::<FirmwareView>(request).await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let (fw, existed) = match sent {
                Ok(answer) => (answer.body, answer.replayed),
                // A V4.1 image uploaded before (its key forgotten): the same bytes are the same firmware.
                Err(e) if e.is(ErrorCode::FirmwareVersionExists) => {
                    let list: Page<FirmwareView> = pages(
                        api,
                        &format!("/products/{product_key}/firmware"),
                        "",
                        &PageArgs { all: true, ..Default::default() },
                    )
                    .await?;
                    let same = list.items.into_iter().find(|f| {
                        f.sha256 == sha256
                            && f.push_method.to_string_lossy() == push_method.wire()
                            && soft_version.as_ref().is_none_or(|s| f.soft_version.as_ref() == Some(s))
                            && hard_version.as_ref().is_none_or(|h| f.hard_version.as_ref() == Some(h))
                    });
                    (same.ok_or(e)?, true)
                }
                Err(e) => return Err(e),
            };
            let note = if existed { " (already uploaded)" } else { "" };
            emit(opts, &fw, fw.id, || format!("{}{note}", firmware_line(&fw)))
        }
        FirmwareCommand::List { product_key, verified, page } => {
            #[derive(Serialize)]
            struct Filters {
                verified: Option<bool>,
            }
            let filters = query(&Filters { verified }).trim_start_matches('?').to_owned();
            let list: Page<FirmwareView> =
                pages(api, &format!("/products/{product_key}/firmware"), &filters, &page).await?;
            let ids = list.items.iter().map(|f| f.id.to_string()).collect();
            let rows = list.items.iter().map(firmware_line).collect();
            lines(opts, &list, ids, rows)
        }
        FirmwareCommand::Show { id } => {
            let fw: FirmwareView = api.get(&format!("/firmware/{id}")).await?;
            emit(opts, &fw, fw.id, || firmware_line(&fw))
        }
        FirmwareCommand::Download { id, output } => {
            let fw: FirmwareView = api.get(&format!("/firmware/{id}")).await?;
            let response = api.send_raw(api.request(HttpMethod::GET, &format!("/firmware/{id}/file"))).await?;
            let bytes =
                response.bytes().await.map_err(|e| CliError::new(Class::Server, format!("download cut: {e}")))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if got != fw.sha256 {
                return Err(CliError::new(
                    Class::Local,
                    format!("downloaded SHA-256 {got} is not the firmware's {}", fw.sha256),
                ));
            }
            let target = output.unwrap_or_else(|| fw.file_name.clone().into());
            if target.as_os_str() == "-" {
                std::io::stdout().write_all(&bytes)?;
                return Ok(());
            }
            std::fs::write(&target, &bytes)
                .map_err(|e| CliError::new(Class::Local, format!("cannot write {}: {e}", target.display())))?;
            emit(opts, &fw, fw.id, || format!("wrote {} ({} bytes, sha256 {})", target.display(), bytes.len(), got))
        }
        FirmwareCommand::Delete { id } => {
            api.delete(&format!("/firmware/{id}")).await?;
            emit(opts, &serde_json::json!({ "deleted": id }), id, || format!("deleted firmware {id}"))
        }
    }
}

trait WireName {
    fn to_string_lossy(&self) -> String;
}

impl<T: Serialize> WireName for T {
    fn to_string_lossy(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

// --- verification ---

fn verification_line(v: &VerificationView) -> String {
    let reason = v.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    format!(
        "verification {} of firmware {} on {}: {}{reason}",
        v.id,
        v.firmware_id,
        v.mac.as_deref().unwrap_or(&v.did),
        v.state.to_string_lossy()
    )
}

/// The firmware's latest verification, if it has one.
async fn latest_verification(api: &Api, firmware_id: i64) -> CliResult<Option<VerificationView>> {
    match api.get(&format!("/firmware/{firmware_id}/verification")).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is(ErrorCode::VerificationNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn same_mac(a: Option<&str>, b: &str) -> bool {
    let norm = |s: &str| s.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_uppercase();
    a.is_some_and(|a| norm(a) == norm(b))
}

/// Already verified firmware: its state, as success.
fn already_verified(opts: &Opts, fw: &FirmwareView, latest: Option<&VerificationView>) -> CliResult<()> {
    match latest {
        Some(v) => emit(opts, v, v.id, || format!("firmware {} is already verified; {}", fw.id, verification_line(v))),
        None => emit(opts, fw, fw.id, || format!("firmware {} is already verified", fw.id)),
    }
}

async fn verification(api: &Api, opts: &Opts, command: VerificationCommand) -> CliResult<()> {
    match command {
        VerificationCommand::Start { firmware_id, mac, idempotency_key } => {
            let fw: FirmwareView = api.get(&format!("/firmware/{firmware_id}")).await?;
            let latest = latest_verification(api, firmware_id).await?;
            if fw.verified {
                return already_verified(opts, &fw, latest.as_ref());
            }
            if let Some(v) = &latest
                && matches!(v.state, VerificationState::Pushing | VerificationState::AwaitingConfirmation)
                && same_mac(v.mac.as_deref(), &mac)
            {
                return emit(opts, v, v.id, || format!("already running: {}", verification_line(v)));
            }
            let key =
                idempotency_key.unwrap_or_else(|| keys::verification(firmware_id, &mac, latest.as_ref().map(|v| v.id)));
            let request = api
                .request(HttpMethod::POST, &format!("/firmware/{firmware_id}/verification"))
                .header("Idempotency-Key", key)
                .json(&StartVerificationRequest { mac });
            let v = api.send::<VerificationView>(request).await?.body;
            emit(opts, &v, v.id, || format!("started {}", verification_line(&v)))
        }
        VerificationCommand::Wait { firmware_id, timeout, interval } => {
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut last: Option<VerificationState> = None;
            loop {
                let fw: FirmwareView = api.get(&format!("/firmware/{firmware_id}")).await?;
                let latest = latest_verification(api, firmware_id).await?;
                if fw.verified {
                    return already_verified(opts, &fw, latest.as_ref());
                }
                let Some(v) = latest else {
                    return Err(CliError::new(
                        Class::NotFound,
                        format!("firmware {firmware_id} has no verification; start one with `ota verification start`"),
                    ));
                };
                if opts.json && last != Some(v.state) {
                    // Progress as JSON lines; the last line is the final state.
                    println!("{}", serde_json::to_string(&v).unwrap_or_default());
                }
                last = Some(v.state);
                match v.state {
                    VerificationState::AwaitingConfirmation | VerificationState::Verified => {
                        if !opts.json {
                            emit(opts, &v, v.id, || verification_line(&v))?;
                        }
                        return Ok(());
                    }
                    VerificationState::Failed | VerificationState::Expired | VerificationState::Cancelled => {
                        return Err(CliError::new(Class::Ended, verification_line(&v)));
                    }
                    VerificationState::Pushing => {}
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() + interval > d) {
                    return Err(CliError::new(
                        Class::Timeout,
                        format!("still pushing after --timeout: {}", verification_line(&v)),
                    ));
                }
                tokio::time::sleep(interval).await;
            }
        }
        VerificationCommand::Confirm { firmware_id, not_stable } => {
            let confirmed: CliResult<VerificationView> = api
                .post(
                    &format!("/firmware/{firmware_id}/verification/confirm"),
                    &ConfirmVerificationRequest { stable: !not_stable },
                )
                .await;
            match confirmed {
                Ok(v) => emit(opts, &v, v.id, || format!("confirmed {}", verification_line(&v))),
                Err(e) if !not_stable && matches!(e.class, Class::Refused | Class::NotFound) => {
                    let fw: FirmwareView =
                        api.get(&format!("/firmware/{firmware_id}")).await.map_err(|_| e.clone_shallow())?;
                    if !fw.verified {
                        return Err(e);
                    }
                    let latest = latest_verification(api, firmware_id).await?;
                    already_verified(opts, &fw, latest.as_ref())
                }
                Err(e) => Err(e),
            }
        }
        VerificationCommand::Show { firmware_id } => {
            let v: VerificationView = api.get(&format!("/firmware/{firmware_id}/verification")).await?;
            emit(opts, &v, v.id, || verification_line(&v))
        }
        VerificationCommand::Cancel { firmware_id } => {
            let v: VerificationView =
                api.send(api.request(HttpMethod::DELETE, &format!("/firmware/{firmware_id}/verification"))).await?.body;
            emit(opts, &v, v.id, || format!("cancelled {}", verification_line(&v)))
        }
    }
}

impl CliError {
    /// A copy of the class, status, body and message.
    fn clone_shallow(&self) -> CliError {
        CliError { class: self.class, status: self.status, body: self.body.clone(), message: self.message.clone() }
    }
}

// --- rules ---

fn rule_line(r: &RuleView) -> String {
    let c = &r.counts;
    let name = r.name.as_deref().map(|n| format!(" `{n}`")).unwrap_or_default();
    let wave = r.current_wave.map(|w| format!(", wave {w}")).unwrap_or_default();
    format!(
        "rule {}{name} of firmware {}: {}{wave}; {}/{} succeeded, {} in progress, {} failed, {} pending",
        r.request_id,
        r.firmware_id,
        status_name(r.status),
        c.succeeded,
        c.targets,
        c.in_progress,
        c.failed,
        c.pending
    )
}

fn read_json_arg<T: DeserializeOwned>(what: &str, text: &str) -> CliResult<T> {
    let content = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::new(Class::Local, format!("cannot read {path}: {e}")))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&content).map_err(|e| CliError::new(Class::Usage, format!("{what}: {e}")))
}

/// The API's rule body from the flags or the file.
fn rule_body(spec: &RuleSpec) -> CliResult<RuleBody> {
    if let Some(file) = &spec.file {
        let mut text = String::new();
        if file.as_os_str() == "-" {
            std::io::stdin().read_to_string(&mut text)?;
        } else {
            text = std::fs::read_to_string(file)
                .map_err(|e| CliError::new(Class::Local, format!("cannot read {}: {e}", file.display())))?;
        }
        return serde_json::from_str(&text)
            .map_err(|e| CliError::new(Class::Usage, format!("{} is not a rule body: {e}", file.display())));
    }
    if spec.old_versions.is_empty() {
        return Err(CliError::new(
            Class::Usage,
            "give the versions to upgrade from with --old-version (see `GET /firmware/{id}/old-versions`)",
        ));
    }
    let start = match &spec.start {
        Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|e| CliError::new(Class::Usage, format!("--start `{s}`: {e}")))?,
        None => ota_domain::Clock::now(&ota_domain::SystemClock).date_naive(),
    };
    let end = match &spec.end {
        Some(e) => e.clone(),
        None => (start + chrono::Duration::days(i64::from(spec.days.max(1)) - 1)).format("%Y-%m-%d").to_string(),
    };
    let (a, b) = spec
        .window
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?)))
        .ok_or_else(|| {
            CliError::new(Class::Usage, format!("--window `{}`: use START-END in whole hours, e.g. 22-2", spec.window))
        })?;
    let policy: Option<RolloutPolicy> = spec.policy.as_deref().map(|p| read_json_arg("--policy", p)).transpose()?;
    let target = match spec.target {
        None | Some(Target::All) if spec.macs.is_none() && spec.mac_list_id.is_none() && spec.regions.is_empty() => {
            TargetKind::All
        }
        Some(Target::All) => TargetKind::All,
        Some(Target::Regions) => TargetKind::Regions,
        Some(Target::Macs) => TargetKind::Macs,
        None if !spec.regions.is_empty() => TargetKind::Regions,
        None => TargetKind::Macs,
    };
    Ok(RuleBody {
        name: spec.name.clone(),
        target,
        regions: spec.regions.clone(),
        macs: spec.macs.clone(),
        mac_list_id: spec.mac_list_id,
        old_versions: spec.old_versions.clone(),
        period: Period { start: start.format("%Y-%m-%d").to_string(), end },
        daily_window: DailyWindow { start_hour: a, end_hour: b },
        policy,
    })
}

async fn rules(api: &Api, opts: &Opts, command: RuleCommand) -> CliResult<()> {
    match command {
        RuleCommand::Create { firmware_id, spec, idempotency_key } => {
            let body = rule_body(&spec)?;
            let bytes = serde_json::to_vec(&body).map_err(|e| CliError::new(Class::Local, e.to_string()))?;
            let key = idempotency_key.unwrap_or_else(|| keys::rule(firmware_id, body.name.as_deref(), &bytes));
            let request = api
                .request(HttpMethod::POST, &format!("/firmware/{firmware_id}/rules"))
                .header("Idempotency-Key", key)
                .json(&body);
            let answer = api.send::<RuleView>(request).await?;
            let note = if answer.replayed { " (already created)" } else { "" };
            let r = answer.body;
            emit(opts, &r, r.request_id, || format!("{}{note}", rule_line(&r)))
        }
        RuleCommand::Preview { rule_id, firmware, spec } => {
            let preview: RulePreview = match (rule_id, firmware) {
                (Some(id), _) => api.get(&format!("/rules/{id}/preview")).await?,
                (None, Some(fw)) => api.post(&format!("/firmware/{fw}/rules/preview"), &rule_body(&spec)?).await?,
                (None, None) => return Err(CliError::new(Class::Usage, "give a rule id or --firmware")),
            };
            emit(opts, &preview, preview.targets, || {
                format!(
                    "{} targets ({} online), {} already on the version, {} in other rules {:?}, {} unknown MACs",
                    preview.targets,
                    preview.online,
                    preview.already_on_target,
                    preview.in_other_rules,
                    preview.other_rule_ids,
                    preview.unknown_macs
                )
            })
        }
        RuleCommand::Show { rule_id } => {
            let r: RuleView = api.get(&format!("/rules/{rule_id}")).await?;
            emit(opts, &r, r.request_id, || rule_line(&r))
        }
        RuleCommand::List { product_key, firmware_id, page } => {
            #[derive(Serialize)]
            struct Filters {
                product_key: Option<String>,
                firmware_id: Option<i64>,
            }
            let filters = query(&Filters { product_key, firmware_id }).trim_start_matches('?').to_owned();
            let list: Page<RuleView> = pages(api, "/rules", &filters, &page).await?;
            let ids = list.items.iter().map(|r| r.request_id.to_string()).collect();
            let rows = list.items.iter().map(rule_line).collect();
            lines(opts, &list, ids, rows)
        }
        RuleCommand::Start { rule_id } => {
            let started: CliResult<RuleStarted> = api
                .post(
                    &format!("/rules/{rule_id}/start"),
                    &StartRuleRequest { confirm_stable: true, accept_terms: true },
                )
                .await;
            match started {
                Ok(s) => emit(opts, &s, s.request_id, || {
                    format!("rule {} {} to {} devices", s.request_id, status_name(s.status), s.target_devices)
                }),
                // A rerun: the rule already pushes (or is done). Its state is the answer.
                Err(e) if e.is(ErrorCode::RuleWrongStatus) => {
                    let r: RuleView = api.get(&format!("/rules/{rule_id}")).await?;
                    if matches!(r.status, RuleStatus::Pushing | RuleStatus::Completed) {
                        emit(opts, &r, r.request_id, || format!("already started: {}", rule_line(&r)))
                    } else {
                        Err(e)
                    }
                }
                Err(e) => Err(e),
            }
        }
        RuleCommand::Stop { rule_id } => action(api, opts, rule_id, "stop").await,
        RuleCommand::Pause { rule_id } => action(api, opts, rule_id, "pause").await,
        RuleCommand::Resume { rule_id } => action(api, opts, rule_id, "resume").await,
        RuleCommand::Cancel { rule_id } => action(api, opts, rule_id, "cancel").await,
        RuleCommand::Advance { rule_id } => action(api, opts, rule_id, "advance").await,
        RuleCommand::Watch { rule_id, timeout, interval } => {
            let display = Display::choose(opts.json, opts.quiet);
            let rule = watch::watch(EventSource::new(api.clone(), rule_id, interval), display, timeout).await?;
            if !opts.json && !opts.quiet && std::io::stderr().is_terminal() {
                println!("{}", rule_line(&rule));
            }
            if opts.quiet {
                println!("{}", rule.request_id);
            }
            Ok(())
        }
        RuleCommand::Devices { rule_id, filter, wave, mac, page } => {
            #[derive(Serialize)]
            struct Filters {
                filter: Option<String>,
                wave: Option<u32>,
                mac: Option<String>,
            }
            let filter = filter.map(|f| f.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default());
            let filters = query(&Filters { filter, wave, mac }).trim_start_matches('?').to_owned();
            let list: Page<RuleDeviceView> = pages(api, &format!("/rules/{rule_id}/devices"), &filters, &page).await?;
            let ids = list.items.iter().map(|d| d.mac.clone().or(d.did.clone()).unwrap_or_default()).collect();
            let rows = list
                .items
                .iter()
                .map(|d| {
                    format!(
                        "{}  wave {}  {}  {} → {}{}",
                        d.mac.as_deref().or(d.did.as_deref()).unwrap_or("-"),
                        d.wave,
                        d.stage.to_string_lossy(),
                        d.from_version.as_deref().unwrap_or("?"),
                        d.to_version.as_deref().unwrap_or("?"),
                        d.last_error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
                    )
                })
                .collect();
            lines(opts, &list, ids, rows)
        }
        RuleCommand::Export { rule_id, output } => {
            let response = api.send_raw(api.request(HttpMethod::GET, &format!("/rules/{rule_id}/devices.csv"))).await?;
            let bytes = response.bytes().await.map_err(|e| CliError::new(Class::Server, format!("export cut: {e}")))?;
            match output {
                Some(path) if path.as_os_str() != "-" => {
                    std::fs::write(&path, &bytes)
                        .map_err(|e| CliError::new(Class::Local, format!("cannot write {}: {e}", path.display())))?;
                    if !opts.quiet {
                        eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
                    }
                }
                _ => std::io::stdout().write_all(&bytes)?,
            }
            Ok(())
        }
        RuleCommand::Exclude { rule_id, macs, mac_list_id } => {
            let result: ExcludeResult =
                api.post(&format!("/rules/{rule_id}/exclude"), &ExcludeRequest { macs, mac_list_id }).await?;
            emit(opts, &result, result.excluded, || {
                format!("rule {rule_id}: {} excluded, {} skipped", result.excluded, result.skipped)
            })
        }
        RuleCommand::Preflight { rule_id, offline_days } => {
            #[derive(Serialize)]
            struct Q {
                offline_days: Option<u32>,
            }
            let p: Preflight = api.get(&format!("/rules/{rule_id}/preflight{}", query(&Q { offline_days }))).await?;
            if opts.json || opts.quiet {
                return emit(opts, &p, p.targets, String::new);
            }
            println!(
                "rule {rule_id}: {} targets, {} already on the version, {} incompatible, {} unknown MACs",
                p.targets, p.already_on_target, p.incompatible, p.unknown_macs
            );
            for w in &p.waves {
                println!("  {}", serde_json::to_string(w).unwrap_or_default());
            }
            Ok(())
        }
    }
}

/// A rollout action (`POST /rules/{id}/{verb}`, no body), answering the rule.
async fn action(api: &Api, opts: &Opts, rule_id: i64, verb: &str) -> CliResult<()> {
    let r: RuleView = api.post_empty(&format!("/rules/{rule_id}/{verb}")).await?;
    emit(opts, &r, r.request_id, || rule_line(&r))
}

// --- devices ---

fn device_line(d: &DeviceView) -> String {
    format!(
        "{}  did {}  {}  wifi {}  {}",
        d.mac.as_deref().unwrap_or("-"),
        d.did.as_deref().unwrap_or("-"),
        d.push_method.map(|m| m.to_string_lossy()).unwrap_or_else(|| "-".into()),
        d.wifi.soft_version.as_deref().unwrap_or("-"),
        if d.online { "online" } else { "offline" }
    )
}

async fn devices(api: &Api, opts: &Opts, command: DeviceCommand) -> CliResult<()> {
    match command {
        DeviceCommand::List { product_key, online, mac, page } => {
            #[derive(Serialize)]
            struct Filters {
                online: Option<bool>,
                mac: Option<String>,
            }
            let filters = query(&Filters { online, mac }).trim_start_matches('?').to_owned();
            let list: Page<DeviceView> =
                pages(api, &format!("/products/{product_key}/devices"), &filters, &page).await?;
            let ids = list.items.iter().map(|d| d.mac.clone().or(d.did.clone()).unwrap_or_default()).collect();
            let rows = list.items.iter().map(device_line).collect();
            lines(opts, &list, ids, rows)
        }
        DeviceCommand::Import { product_key, file, format, idempotency_key } => {
            let content = std::fs::read(&file)
                .map_err(|e| CliError::new(Class::Local, format!("cannot read {}: {e}", file.display())))?;
            let json = match format {
                Some(f) => f == ImportFormat::Json,
                None => file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")),
            };
            let key = idempotency_key.unwrap_or_else(|| keys::import(&product_key, json, &content));
            let request = api
                .request(HttpMethod::POST, &format!("/products/{product_key}/devices/import"))
                .header("Idempotency-Key", key)
                .header("content-type", if json { "application/json" } else { "text/csv" })
                .body(content);
            let answer = api.send::<DeviceImportReport>(request).await?;
            let report = answer.body;
            let note = if answer.replayed { " (already imported)" } else { "" };
            emit(opts, &report, report.added, || {
                let mut text = format!(
                    "{} added, {} updated, {} unchanged, {} rejected{note}",
                    report.added,
                    report.updated,
                    report.unchanged,
                    report.rejected.len()
                );
                for r in &report.rejected {
                    text.push_str(&format!("\n  {}", serde_json::to_string(r).unwrap_or_default()));
                }
                text
            })
        }
    }
}
