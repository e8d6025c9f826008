//! The HTTP calls GAgent makes (`device-protocol.md#registration`, `device-protocol.md#provision`,
//! `device-protocol.md#deregistration`, `device-protocol.md#v4-ota`, `device-protocol.md#v41-ota`,
//! `device-protocol.md#firmware-download`, `device-protocol.md#multi-mcu-latest`), served over
//! [`crate::http`]: lenient parsing, replies of at most 1 KB sent chunked in one write, downloads
//! never chunked with every header in the first 600 bytes.
//!
//! Error replies have the shape of `device-protocol.md#open-question-the-no-update-reply`,
//! `{"error_code":<n>,"error_message":"<code>", "detail_message":null}`: 9500 / 9502 for "no
//! update" (the two texts the hosted cloud used), otherwise the HTTP status and the stable error
//! code of `proto-docs/errors.md`. GAgent only tests the status line.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ota_domain::upgrades::downloads::download_end;
use ota_domain::upgrades::{Check, CheckAuth, NoOffer, Offer, RecordEventWriter};
use ota_domain::{Domain, DomainError};
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, RegisteredVia};

use crate::admission::Admission;
use crate::http::response::sanitize_filename;
use crate::http::{DownloadFile, DownloadHead, FormBuilder, Handler, ProductCipher, Reply, Request, api_reply};
use crate::throttle::AuthThrottle;

/// Where devices are sent: the host in download URLs and the MQTT address in provision.
#[derive(Debug, Clone)]
pub struct DeviceEndpoints {
    /// Host name put into download URLs, which GAgent always fetches from port 80.
    pub public_host: String,
    /// MQTT host and port handed out by provision.
    pub mqtt_host: String,
    pub mqtt_port: u16,
}

pub struct DeviceHttp {
    domain: Domain,
    endpoints: DeviceEndpoints,
    /// This gateway's node id: downloads served here are attributed to it.
    node: String,
    /// Where download ends are reported.
    events: RecordEventWriter,
    throttle: Arc<AuthThrottle>,
    /// Bounds registrations and provisions in flight ([`crate::admission`]).
    admission: Arc<Admission>,
}

/// A wrong passcode's reply waits at most this long: the HTTP server answers a handler that
/// takes longer with 503 (`handler_timeout`), and the answer must stay the 403 of a wrong passcode.
const MAX_HTTP_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

const FORM: &str = "application/x-www-form-urlencoded";

impl DeviceHttp {
    pub fn new(
        domain: Domain,
        endpoints: DeviceEndpoints,
        node: String,
        events: RecordEventWriter,
        throttle: Arc<AuthThrottle>,
        admission: Arc<Admission>,
    ) -> Arc<DeviceHttp> {
        Arc::new(DeviceHttp { domain, endpoints, node, events, throttle, admission })
    }

    /// A registration or provision: run when a slot comes free within the admission wait,
    /// otherwise refused at once with 503 `device_calls_busy`, which GAgent retries.
    async fn admitted<F>(&self, call: F) -> Result<Reply, DomainError>
    where
        F: Future<Output = Result<Reply, DomainError>>,
    {
        let Some(_slot) = self.admission.device_calls.enter().await else {
            return Err(DomainError::new(
                ErrorCode::DeviceCallsBusy,
                "too many registrations and provisions at once; try again",
            ));
        };
        call.await
    }

    /// A passcode-bearing call: checked unless the address has too many attempts in flight
    /// (then answered as a wrong passcode, unchecked); a wrong passcode's answer is delayed
    /// ([`crate::throttle`]).
    async fn guarded<T, F>(&self, peer: SocketAddr, did: &str, call: F) -> Result<T, DomainError>
    where
        F: Future<Output = Result<T, DomainError>>,
    {
        let Some(attempt) = self.throttle.begin(peer.ip()) else {
            http_refused("throttled");
            return Err(DomainError::new(ErrorCode::InvalidCredentials, "unknown did or wrong passcode"));
        };
        let result = call.await;
        if let Err(DomainError::Expected { code: ErrorCode::InvalidCredentials, .. }) = &result {
            http_refused("wrong_passcode");
            tokio::time::sleep(self.throttle.wrong(&attempt, did).min(MAX_HTTP_WAIT)).await;
        }
        result
    }

    async fn route(&self, req: Request, peer: SocketAddr) -> Reply {
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let ip = Some(peer.ip().to_string());
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["dev", "devices"]) => self.admitted(self.register_plain(&req, ip)).await,
            ("DELETE", ["dev", "devices"]) => self.deregister(&req, peer).await,
            ("GET", ["dev", "devices", did]) => self.admitted(self.provision_plain(did, ip)).await,
            ("POST", ["dev", pk, "device"]) => self.admitted(self.register_encrypted(pk, &req, ip)).await,
            ("GET", ["dev", pk, "device"]) => self.admitted(self.provision_encrypted(pk, &req, ip)).await,
            ("GET", ["dev", "ota", "target_fid"]) => self.target_fid(&req, ip).await,
            ("POST", ["dev", "ota", "v4.1", "update_and_check", did]) => {
                self.guarded(peer, did, self.update_and_check(did, &req, ip)).await
            }
            ("GET", ["dev", "ota", "v4.1", "latest"]) => self.latest(&req).await,
            ("GET", ["dev", "ota", "v4.1", "download", id]) => return self.download_offer(id, PushMethod::V41).await,
            ("GET", ["dev", "ota", "v4.1", "firmware", id]) => return self.download_firmware(id).await,
            ("GET", ["dev", "ota", "download", _pk, _ty, _hw, _sw, id, _file]) => {
                return self.download_offer(id, PushMethod::V4).await;
            }
            // For load balancers and container health checks on a gateway-only node (which
            // has no management API): the process is up / the database answers within 0.8 s.
            ("GET", ["healthz"]) => return health_reply(true),
            ("GET", ["readyz"]) => return health_reply(self.domain.db.ping(READY_WITHIN).await),
            _ => Err(DomainError::new(ErrorCode::RouteNotFound, "no such device endpoint")),
        };
        match result {
            Ok(reply) => reply,
            Err(e) => domain_error_reply(&e),
        }
    }

    async fn register_plain(&self, req: &Request, ip: Option<String>) -> Result<Reply, DomainError> {
        let form = req.form();
        let (pk, mac, passcode) = (field(&form, "product_key")?, field(&form, "mac")?, field(&form, "passcode")?);
        let did = self.domain.register_device(pk, mac, passcode, RegisteredVia::Plain, ip).await?;
        ok(201, FormBuilder::new().pair("did", did).finish().as_bytes())
    }

    async fn register_encrypted(&self, pk: &str, req: &Request, ip: Option<String>) -> Result<Reply, DomainError> {
        let cipher = self.cipher(pk).await?;
        let form = req.form();
        let data = field(&form, "data")?;
        let plain = cipher.decrypt_hex(data).map_err(|e| DomainError::invalid("data", e.to_string()))?;
        let inner = crate::http::form::parse_bytes(&plain);
        let (mac, passcode) = (field(&inner, "mac")?, field(&inner, "passcode")?);
        let did = self.domain.register_device(pk, mac, passcode, RegisteredVia::Encrypted, ip).await?;
        let body = cipher.encrypt_to_hex(FormBuilder::new().pair("did", did).finish().as_bytes());
        ok(201, body.as_bytes())
    }

    fn provision_body(&self, server_ts: i64) -> String {
        // `port` is read up to the next `&`, so another field must follow it
        // (device-protocol.md#plain-provision).
        let e = &self.endpoints;
        FormBuilder::new()
            .pair("host", &e.mqtt_host)
            .pair("port", e.mqtt_port)
            .pair("server_ts", server_ts)
            .pair("log_host", &e.mqtt_host)
            .pair("log_port", 0)
            .pair("biz_log", 0)
            .pair("sys_log", 0)
            .finish()
    }

    async fn provision_plain(&self, did: &str, ip: Option<String>) -> Result<Reply, DomainError> {
        self.domain.provision_device(did, None, ip).await?;
        let body = self.provision_body(self.domain.clock.now_ms() / 1000);
        ok(200, body.as_bytes())
    }

    async fn provision_encrypted(&self, pk: &str, req: &Request, ip: Option<String>) -> Result<Reply, DomainError> {
        let cipher = self.cipher(pk).await?;
        let hex_did = req.query_param("did").ok_or_else(|| DomainError::missing("did"))?;
        let did = cipher.decrypt_hex(hex_did).map_err(|e| DomainError::invalid("did", e.to_string()))?;
        let did = String::from_utf8(did).map_err(|_| DomainError::invalid("did", "the did is not text"))?;
        self.domain.provision_device(&did, Some(pk), ip).await?;
        let body = self.provision_body(self.domain.clock.now_ms() / 1000);
        ok(200, cipher.encrypt_to_hex(body.as_bytes()).as_bytes())
    }

    async fn deregister(&self, req: &Request, peer: SocketAddr) -> Result<Reply, DomainError> {
        let mut form = req.form();
        form.extend(req.query.iter().cloned());
        let (did, passcode) = (field(&form, "did")?, field(&form, "passcode")?);
        let source = peer.ip().to_string();
        self.guarded(peer, did, self.domain.deregister_device(did, passcode, Some(&source))).await?;
        ok(200, b"")
    }

    async fn cipher(&self, pk: &str) -> Result<ProductCipher, DomainError> {
        let secret = self.domain.product_secret(pk).await?;
        ProductCipher::from_secret_hex(&secret)
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("product secret of {pk} is not usable: {e}")))
    }

    /// V4 (`device-protocol.md#v4-check`): `target_fid` with the device's versions and
    /// `current_fid`. No passcode: it writes only from the device's live session address
    /// (`ota_domain::security`).
    async fn target_fid(&self, req: &Request, ip: Option<String>) -> Result<Reply, DomainError> {
        let q = &req.query;
        let fw_type = parse_type(field(q, "type")?)?;
        let fid = field(q, "current_fid")?
            .trim()
            .parse::<i64>()
            .map_err(|_| DomainError::invalid("current_fid", "not a number"))?;
        let check = Check {
            did: field(q, "did")?.to_owned(),
            auth: CheckAuth::ProductKey(field(q, "product_key")?.to_owned()),
            method: PushMethod::V4,
            fw_type,
            hard: Some(version(q, "hard_version")?),
            soft: Some(version(q, "soft_version")?),
            fid: Some(fid),
            ip,
            node: Some(self.node.clone()),
        };
        // As for `update_and_check`: download ends this gateway saw are written first.
        self.events.flush().await;
        match self.domain.target_fid_check(check).await? {
            Ok(offer) => {
                let url = self.v4_url(&offer);
                let fid = offer.firmware.fid.unwrap_or_default();
                // GK cuts the URL at the next `&`, so `firmware_version` must follow it
                // (device-protocol.md#v4-reply).
                let body = FormBuilder::new()
                    .pair("target_fid", fid)
                    .pair("download_url", url)
                    .pair("firmware_version", format!("{fid:08}"))
                    .finish();
                ok(200, body.as_bytes())
            }
            Err(none) => Ok(no_offer_reply(none)),
        }
    }

    /// V4.1 (`device-protocol.md#v41-check`): `update_and_check` with the passcode and the current
    /// versions.
    async fn update_and_check(&self, did: &str, req: &Request, ip: Option<String>) -> Result<Reply, DomainError> {
        let form = req.form();
        let check = Check {
            did: did.to_owned(),
            auth: CheckAuth::Passcode(field(&form, "passcode")?.to_owned()),
            method: PushMethod::V41,
            fw_type: parse_type(field(&form, "type")?)?,
            hard: Some(version(&form, "hard_version")?),
            soft: Some(version(&form, "soft_version")?),
            fid: None,
            ip,
            node: Some(self.node.clone()),
        };
        // A download this gateway served may have ended moments ago with its end still
        // queued: the device's next check must be judged after it (a complete download
        // then a report of the old version fails the record; read before the end, the
        // report would find the record still `downloading` and change nothing).
        self.events.flush().await;
        match self.domain.passcode_check(check).await? {
            Ok(offer) => {
                let url = format!("http://{}/dev/ota/v4.1/download/{}", self.endpoints.public_host, offer.upgrade_id);
                let body = FormBuilder::new()
                    .pair("soft_ver", offer.firmware.soft_version.clone().unwrap_or_default())
                    .pair("download_url", url)
                    .finish();
                ok(200, body.as_bytes())
            }
            Err(none) => Ok(no_offer_reply(none)),
        }
    }

    /// `device-protocol.md#multi-mcu-latest`: the sub-MCU check, which names no device.
    async fn latest(&self, req: &Request) -> Result<Reply, DomainError> {
        let q = &req.query;
        let (hw, sw) = (version(q, "hard_version")?, version(q, "soft_version")?);
        match self.domain.latest_firmware(field(q, "product_key")?, &hw, &sw).await? {
            Some(fw) => {
                let url = format!("http://{}/dev/ota/v4.1/firmware/{}", self.endpoints.public_host, fw.id);
                let body = FormBuilder::new()
                    .pair("soft_ver", fw.soft_version.unwrap_or_default())
                    .pair("download_url", url)
                    .finish();
                ok(200, body.as_bytes())
            }
            None => Ok(no_offer_reply(NoOffer::NotInEffect)),
        }
    }

    fn v4_url(&self, offer: &Offer) -> String {
        let fw = &offer.firmware;
        v4_download_url(
            &self.endpoints.public_host,
            &offer.product_key,
            fw.fw_type(),
            fw.hard_version.as_deref().unwrap_or_default(),
            fw.soft_version.as_deref().unwrap_or_default(),
            offer.upgrade_id,
            &fw.file_name,
        )
    }

    async fn download_offer(&self, id: &str, method: PushMethod) -> Reply {
        let Ok(upgrade_id) = id.parse::<i64>() else {
            return domain_error_reply(&not_found_download());
        };
        let (fw, path) = match self.domain.offer_download_file(upgrade_id, &self.node).await {
            Ok(Some(found)) => found,
            Ok(None) => return domain_error_reply(&not_found_download()),
            Err(e) => return domain_error_reply(&e),
        };
        let total = fw.size.max(0) as u64;
        let events = self.events.clone();
        let counted = download_started("offer");
        // The record is `downloading` now: however the download ends, its end is reported
        // (through the batched event writer), also when the file cannot be opened.
        let on_done: crate::http::server::DoneHook = Box::new(move |sent, result: std::io::Result<()>| {
            counted.ended(sent, &result, total);
            events.send(upgrade_id, download_end(sent, total, result.err().map(|e| e.to_string())));
        });
        download_reply(&fw, path, method, on_done).await
    }

    async fn download_firmware(&self, id: &str) -> Reply {
        let Ok(firmware_id) = id.parse::<i64>() else {
            return domain_error_reply(&not_found_download());
        };
        match self.domain.firmware_download_file(firmware_id).await {
            Ok(Some((fw, path))) => {
                let counted = download_started("latest");
                let total = fw.size.max(0) as u64;
                let on_done: crate::http::server::DoneHook =
                    Box::new(move |sent, result: std::io::Result<()>| counted.ended(sent, &result, total));
                download_reply(&fw, path, PushMethod::V41, on_done).await
            }
            Ok(None) => domain_error_reply(&not_found_download()),
            Err(e) => domain_error_reply(&e),
        }
    }
}

impl Handler for DeviceHttp {
    fn handle(&self, req: Request, peer: SocketAddr) -> impl Future<Output = Reply> + Send {
        self.route(req, peer)
    }
}

/// The V4 download URL: the layout of the HF comment (`device-protocol.md#v4-reply`),
/// `/dev/ota/download/<pk>/<type>/<hw>/<sw>/<file>`, with the upgrade id before the file name so
/// the download can be attributed to the device.
pub fn v4_download_url(
    public_host: &str,
    product_key: &str,
    fw_type: FirmwareType,
    hw: &str,
    sw: &str,
    upgrade_id: i64,
    file_name: &str,
) -> String {
    format!(
        "http://{public_host}/dev/ota/download/{product_key}/{}/{hw}/{sw}/{upgrade_id}/{}",
        type_number(fw_type),
        sanitize_filename(file_name)
    )
}

pub fn type_number(t: FirmwareType) -> u8 {
    match t {
        FirmwareType::Wifi => 1,
        FirmwareType::Mcu => 2,
    }
}

/// Opens the image's file and answers with the download; a file that cannot be served (gone,
/// shorter than the record says) is a 500 before any byte of the download, and `on_done` hears
/// of it with 0 bytes sent.
async fn download_reply(
    fw: &ota_domain::firmware::FirmwareRecord,
    path: std::path::PathBuf,
    method: PushMethod,
    on_done: crate::http::server::DoneHook,
) -> Reply {
    // device-protocol.md#open-question-soft-version-on-wi-fi-downloads: `Soft-Version` only on V4.1
    // MCU downloads; V4 sends `Firmware-Version` (device-protocol.md#v4-sequence).
    let version_header = match (method, fw.fw_type()) {
        (PushMethod::V41, FirmwareType::Mcu) => fw.soft_version.clone().map(|v| ("Soft-Version", v)),
        (PushMethod::V41, FirmwareType::Wifi) => None,
        _ => Some(("Firmware-Version", format!("{:08}", fw.fid.unwrap_or_default()))),
    };
    let head = DownloadHead {
        content_length: fw.size.max(0) as u64,
        md5_hex: fw.md5.clone(),
        version_header,
        filename: fw.file_name.clone(),
    };
    match DownloadFile::open(path, &head).await {
        Ok(file) => Reply::Download { file, on_done: Some(on_done) },
        Err(e) => {
            let err = DomainError::Internal(anyhow::anyhow!("firmware {} cannot be served: {e}", fw.id));
            on_done(0, Err(e));
            domain_error_reply(&err)
        }
    }
}

/// Counts a passcode call refused on the device HTTP, by reason.
fn http_refused(reason: &'static str) {
    metrics::counter!(ota_domain::metrics::DEVICE_LOGIN_REFUSALS, "channel" => "http", "reason" => reason).increment(1);
}

/// A download under way, for the download counters.
struct CountedDownload;

fn download_started(kind: &'static str) -> CountedDownload {
    metrics::counter!(ota_domain::metrics::DOWNLOADS_STARTED, "kind" => kind).increment(1);
    CountedDownload
}

impl CountedDownload {
    /// Counts how the download ended: complete when every byte of `total` went out.
    fn ended(self, sent: u64, result: &std::io::Result<()>, total: u64) {
        use ota_domain::metrics as m;
        metrics::counter!(m::DOWNLOAD_BYTES).increment(sent);
        if result.is_ok() && sent >= total {
            metrics::counter!(m::DOWNLOADS_COMPLETED).increment(1);
        } else {
            metrics::counter!(m::DOWNLOADS_CUT).increment(1);
        }
    }
}

fn not_found_download() -> DomainError {
    DomainError::new(ErrorCode::FirmwareNotFound, "no such download")
}

/// How long `/readyz` waits for the database before it answers 503.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// `{"status":"ok"}` (200) or `{"status":"database_unavailable"}` (503).
fn health_reply(ready: bool) -> Reply {
    let (status, body) =
        if ready { (200, r#"{"status":"ok"}"#) } else { (503, r#"{"status":"database_unavailable"}"#) };
    match api_reply(status, "application/json", body.as_bytes()) {
        Ok(bytes) => Reply::Bytes(bytes),
        Err(_) => json_reply(500, 0, "health reply cannot be built"),
    }
}

fn ok(status: u16, body: &[u8]) -> Result<Reply, DomainError> {
    api_reply(status, FORM, body)
        .map(Reply::Bytes)
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("device reply cannot be built: {e}")))
}

fn json_reply(status: u16, error_code: u32, message: &str) -> Reply {
    let body = serde_json::json!({ "error_code": error_code, "error_message": message, "detail_message": null });
    let bytes = api_reply(status, "application/json", body.to_string().as_bytes())
        .unwrap_or_else(|_| Bytes::from_static(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n"));
    Reply::Bytes(bytes)
}

fn no_offer_reply(none: NoOffer) -> Reply {
    match none {
        NoOffer::NoRule => json_reply(400, 9500, "Don't have a push rule id on device"),
        NoOffer::NotInEffect => json_reply(400, 9502, "push rule not in effect or device already upgrade"),
    }
}

/// Maps a domain error to a device reply; the cause of a 5xx stays in the log.
fn domain_error_reply(e: &DomainError) -> Reply {
    let code = e.code();
    let status = match code {
        ErrorCode::InvalidCredentials => 403,
        other => other.http_status(),
    };
    // A refusal of admission control is counted by its metric, not logged per device.
    if status >= 500 && code != ErrorCode::DeviceCallsBusy {
        tracing::error!(error = %e, "device request failed");
    }
    json_reply(status, u32::from(status), code.as_str())
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Result<&'a str, DomainError> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| DomainError::missing(name))
}

fn version(form: &[(String, String)], name: &str) -> Result<String, DomainError> {
    let v = field(form, name)?;
    if !ota_domain::devices::is_version(v) {
        return Err(DomainError::invalid(name, format!("`{name}` must be 8 characters of [0-9A-Za-z]")));
    }
    Ok(v.to_owned())
}

fn parse_type(v: &str) -> Result<FirmwareType, DomainError> {
    match v.trim() {
        "1" => Ok(FirmwareType::Wifi),
        "2" => Ok(FirmwareType::Mcu),
        _ => Err(DomainError::invalid("type", "type must be 1 (Wi-Fi module) or 2 (MCU)")),
    }
}
