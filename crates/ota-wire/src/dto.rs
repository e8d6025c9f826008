//! Request and response bodies of the management REST API (`/api/v1`).
//!
//! These types know serde and OpenAPI, nothing else: the domain maps its records into them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ErrorCode;

// ---------------------------------------------------------------- auth

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// A JWT to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user_id: i64,
    pub username: String,
    pub tenant: String,
    pub role: Role,
    /// The scopes these credentials carry.
    pub scopes: Vec<Scope>,
    /// `session` for a login JWT, `api_token` for an API token.
    pub credential: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the tenant's users besides everything a member may do.
    Admin,
    Member,
}

/// What an API token may do. A login session carries `read`, `write` and `push`, and `admin`
/// too when its user is a tenant admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read products, firmware, devices and rules.
    Read,
    /// Create, edit and delete products, firmware and tokens.
    Write,
    /// Start and stop pushes and verifications.
    Push,
    /// Manage the tenant's users (only worth anything on a tenant admin's token).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Push, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Push => "push",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

// ---------------------------------------------------------------- users

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    pub username: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Member
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    /// `true` disables the user: their sessions and API tokens stop working at once.
    pub disabled: Option<bool>,
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    /// A label, e.g. `ci-release`: 1–64 characters, not only spaces.
    #[schema(min_length = 1, max_length = 64, pattern = "[^ \\t\\n\\r]")]
    pub name: String,
    /// Scopes to grant; a token can never carry a scope its creator lacks.
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Optional lifetime in days (1–3650); no expiry when absent.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The user the token acts as.
    pub user_id: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret, shown this once; only its hash is stored.
    pub secret: String,
}

// ---------------------------------------------------------------- products

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateProductRequest {
    /// 1–128 characters, not only spaces.
    #[schema(min_length = 1, max_length = 128, pattern = "[^ \\t\\n\\r]")]
    pub name: String,
    /// 32 lowercase hex characters; generated when absent.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub product_key: Option<String>,
    /// 32 lowercase hex characters; generated when absent.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub product_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateProductRequest {
    /// 1–128 characters, not only spaces.
    #[schema(min_length = 1, max_length = 128, pattern = "[^ \\t\\n\\r]")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub product_key: String,
    pub product_secret: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

// ---------------------------------------------------------------- firmware

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareType {
    /// The GAgent Wi-Fi module firmware (device `type=1`).
    Wifi,
    /// The MCU behind the module (device `type=2`).
    Mcu,
}

impl FirmwareType {
    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareType::Wifi => "wifi",
            FirmwareType::Mcu => "mcu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wifi" => Some(FirmwareType::Wifi),
            "mcu" => Some(FirmwareType::Mcu),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum PushMethod {
    /// GAgent 01xx–03xx: firmware id over MQTT (0x0205/0x0206/0x0207).
    V1V3,
    /// GAgent 0400/0401: `target_fid` and the 0x020E push.
    V4,
    /// GAgent 04010005+/0402: `update_and_check` and the 0x0211 push.
    #[serde(rename = "V4.1")]
    V41,
}

impl PushMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PushMethod::V1V3 => "V1V3",
            PushMethod::V4 => "V4",
            PushMethod::V41 => "V4.1",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "V1V3" => Some(PushMethod::V1V3),
            "V4" => Some(PushMethod::V4),
            "V4.1" => Some(PushMethod::V41),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    NotStarted,
    Pushing,
    Completed,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirmwareView {
    pub id: i64,
    pub product_key: String,
    pub name: String,
    #[serde(rename = "type")]
    pub fw_type: FirmwareType,
    pub push_method: PushMethod,
    /// V4: the current hardware version of the devices to upgrade; V4.1: of the image.
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    /// V1V3: the product's firmware id; V4: the position in its fid series; V4.1: none.
    pub fid: Option<i64>,
    pub file_name: String,
    pub size: i64,
    /// Lowercase hex MD5 of the file: what GAgent checks.
    pub md5: String,
    pub sha256: String,
    /// CRC-32 (IEEE) of the file, 8 lowercase hex digits.
    pub crc32: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub push_status: PushStatus,
    /// Where to download the exact bytes (needs `read`).
    pub download_path: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateFirmwareRequest {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: Option<String>,
    #[schema(pattern = "^[0-9A-Za-z]{8}$")]
    pub hard_version: Option<String>,
    #[schema(pattern = "^[0-9A-Za-z]{8}$")]
    pub soft_version: Option<String>,
}

/// The multipart form of `POST /api/v1/products/{product_key}/firmware` (documentation only).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct FirmwareUploadForm {
    /// `[A-Za-z0-9_.-]`, 1–64 characters.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    /// `wifi` or `mcu`.
    #[schema(rename = "type")]
    pub fw_type: FirmwareType,
    /// `V1V3`, `V4` or `V4.1`.
    pub push_method: PushMethod,
    /// Exactly 8 of `[0-9A-Za-z]`; required for V4 and V4.1 unless the file name carries it.
    #[schema(pattern = "^[0-9A-Za-z]{8}$")]
    pub hard_version: Option<String>,
    /// Exactly 8 of `[0-9A-Za-z]`; required for V4 and V4.1 unless the file name carries it.
    #[schema(pattern = "^[0-9A-Za-z]{8}$")]
    pub soft_version: Option<String>,
    /// The image: wifi `.bin`; mcu `.bin` or `.hex` (valid Intel HEX); at least 1 KiB.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// The multipart form of `PUT /api/v1/firmware/{id}/file` (documentation only).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct FirmwareFileForm {
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FirmwareListQuery {
    /// `wifi` or `mcu`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub fw_type: Option<FirmwareType>,
    pub push_method: Option<PushMethod>,
    pub verified: Option<bool>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub page: u32,
    pub per_page: u32,
}

// ---------------------------------------------------------------- devices

/// Where a device is, as the console's region targeting sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Region {
    pub country: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
}

/// How a device record came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegisteredVia {
    /// `POST /dev/devices`.
    Plain,
    /// `POST /dev/{product_key}/device` (AES).
    Encrypted,
    /// An import (CSV or JSON): no did until the device registers, unless the import gave one.
    Import,
    /// An unknown did adopted during an open adoption window; no MAC until one is imported.
    Adopted,
}

impl RegisteredVia {
    pub fn as_str(self) -> &'static str {
        match self {
            RegisteredVia::Plain => "plain",
            RegisteredVia::Encrypted => "encrypted",
            RegisteredVia::Import => "import",
            RegisteredVia::Adopted => "adopted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(RegisteredVia::Plain),
            "encrypted" => Some(RegisteredVia::Encrypted),
            "import" => Some(RegisteredVia::Import),
            "adopted" => Some(RegisteredVia::Adopted),
            _ => None,
        }
    }
}

/// The 8-character versions a device reported for one target, with the V4 file id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TargetVersions {
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    /// V4 only: the `current_fid` the device reported.
    pub fid: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Null for an imported device that has not registered yet.
    pub did: Option<String>,
    pub product_key: String,
    /// 12 upper-case hex digits.
    pub mac: Option<String>,
    /// Detected from what the device calls: `update_and_check` → V4.1, `target_fid` → V4, 0x0205 → V1V3.
    pub push_method: Option<PushMethod>,
    pub wifi: TargetVersions,
    pub mcu: TargetVersions,
    /// V1V3: the 8-byte firmware id of the last 0x0205, as a number.
    pub legacy_firmware_id: Option<i64>,
    pub region: Region,
    pub ip: Option<String>,
    pub online: bool,
    pub connected_at: Option<DateTime<Utc>>,
    pub disconnected_at: Option<DateTime<Utc>>,
    /// Last registration, provision, check, login or report.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub registered_via: RegisteredVia,
    /// How the device was taken over from the hosted cloud, its passcode state and conflicts.
    pub adoption: DeviceAdoption,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A device's adoption state (devices provisioned by the hosted cloud, issue 5).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceAdoption {
    /// The policy under which its first MQTT login adopted it (`imported` or `open`); null for
    /// a device that registered here or has not logged in yet.
    pub adopted_via: Option<AdoptionPolicy>,
    pub adopted_at: Option<DateTime<Utc>>,
    /// Whether the server knows the passcode (registered, imported or pinned).
    pub passcode_known: bool,
    /// When the passcode was learned from an MQTT login and pinned.
    pub passcode_pinned_at: Option<DateTime<Utc>>,
    /// An operator reset the passcode: the next MQTT login pins whatever it presents.
    pub repin_pending: bool,
    /// Logins refused because they presented another passcode for this did.
    /// (The time of the last one is in the product's adoption events, kind `conflict`.)
    pub conflicts: i64,
    /// No MAC is known (adopted by an open window): targeting and verification by MAC need
    /// an import that attaches it.
    pub without_mac: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListQuery {
    /// Exact MAC (any case, separators allowed) or a prefix of at least 4 hex digits.
    #[param(pattern = "^[ :.-]*(?:(?:[0-9A-Fa-f][ :.-]*){4,12})?$")]
    pub mac: Option<String>,
    pub did: Option<String>,
    /// With `soft_version`/`hard_version`: which target's versions to match (default wifi).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub fw_type: Option<FirmwareType>,
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    pub country: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub online: Option<bool>,
    /// `true`: only devices without a known MAC (adopted by an open window); `false`: only with one.
    pub without_mac: Option<bool>,
    /// `true`: only devices flagged with passcode conflicts.
    pub conflict: Option<bool>,
    /// `true`: only devices adopted from the hosted cloud; `false`: only the others.
    pub adopted: Option<bool>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

/// Fields an operator may set on a device; absent fields are left alone, `null` clears.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UpdateDeviceRequest {
    /// Up to 64 characters, no `/` or line breaks; `null` or blank clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 64, pattern = "^[^/\\n\\r]*$")]
    pub country: Option<Option<String>>,
    /// Up to 64 characters, no `/` or line breaks; `null` or blank clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 64, pattern = "^[^/\\n\\r]*$")]
    pub province: Option<Option<String>>,
    /// Up to 64 characters, no `/` or line breaks; `null` or blank clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 64, pattern = "^[^/\\n\\r]*$")]
    pub city: Option<Option<String>>,
    /// Any JSON object, at most 4 KiB serialised.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
}

fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// One refused line of an import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportRejection {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub code: ErrorCode,
    pub message: String,
}

/// What an import did to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportOutcome {
    Added,
    Updated,
}

/// One line an import added or changed (unchanged lines are only counted).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportChange {
    /// 1-based line number (CSV: the header is line 1; JSON: the item's position, from 1).
    pub line: u64,
    pub outcome: ImportOutcome,
    pub mac: Option<String>,
    pub did: Option<String>,
    /// What changed: `mac`, `did`, `passcode`, `region`.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceImportReport {
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: Vec<ImportRejection>,
    /// Every added or updated line, in line order.
    pub changes: Vec<ImportChange>,
}

/// One device of a JSON import: the hosted console's device list. `mac` or `did` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeviceImportItem {
    pub mac: Option<String>,
    /// The did the hosted cloud issued (22 letters and digits).
    pub did: Option<String>,
    /// The device's passcode, when the operator has it; otherwise the first MQTT login pins it.
    pub passcode: Option<String>,
    pub country: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    /// `广东省-广州市` or `country/province/city`.
    pub region: Option<String>,
}

/// A JSON import body (a bare array of items is accepted too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeviceImportRequest {
    pub devices: Vec<DeviceImportItem>,
}

// ---------------------------------------------------------------- adoption

/// How a product treats devices provisioned by the hosted cloud that never registered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdoptionPolicy {
    /// Only devices known here log in (registered here, or imported with their passcode).
    Closed,
    /// Devices of the imported list are adopted; a passcode not imported is pinned at the
    /// first successful MQTT login.
    Imported,
    /// As `imported`, and until `open_until`, at most `max_adoptions` unknown dids naming this
    /// product are adopted with their passcode pinned.
    Open,
}

impl AdoptionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AdoptionPolicy::Closed => "closed",
            AdoptionPolicy::Imported => "imported",
            AdoptionPolicy::Open => "open",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [AdoptionPolicy::Closed, AdoptionPolicy::Imported, AdoptionPolicy::Open].into_iter().find(|p| p.as_str() == s)
    }
}

/// A product's adoption policy, as set. Every PUT starts a new window count.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum SetAdoptionRequest {
    // Struct variants, so that serde refuses unknown fields on them too.
    Closed {},
    Imported {},
    Open {
        /// When the window ends; must be in the future.
        open_until: DateTime<Utc>,
        /// How many unknown dids the window may adopt.
        #[schema(minimum = 1, maximum = 1000000000)]
        max_adoptions: i64,
    },
}

impl SetAdoptionRequest {
    pub fn policy(&self) -> AdoptionPolicy {
        match self {
            SetAdoptionRequest::Closed {} => AdoptionPolicy::Closed,
            SetAdoptionRequest::Imported {} => AdoptionPolicy::Imported,
            SetAdoptionRequest::Open { .. } => AdoptionPolicy::Open,
        }
    }
}

/// Counts to watch during a migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AdoptionStats {
    /// Imported devices with a did that have not logged in yet.
    pub imported_waiting: i64,
    /// Devices adopted so far (imported list and open window).
    pub adopted: i64,
    /// Adopted devices without a known MAC.
    pub adopted_without_mac: i64,
    /// Devices flagged with passcode conflicts.
    pub conflicted: i64,
    /// Distinct dids refused for this product.
    pub refused_dids: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdoptionView {
    pub product_key: String,
    pub policy: AdoptionPolicy,
    pub open_until: Option<DateTime<Utc>>,
    pub max_adoptions: Option<i64>,
    /// Unknown dids adopted in the current window (set back to 0 by every PUT).
    pub adopted_in_window: i64,
    /// `open`, before `open_until` and below `max_adoptions`.
    pub window_open: bool,
    pub updated_at: Option<DateTime<Utc>>,
    pub stats: AdoptionStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdoptionEventKind {
    /// A device's first successful login adopted it.
    Adopted,
    /// A login (or a provisional session) was refused by the policy.
    Refused,
    /// A passcode was learned at login and pinned.
    Pinned,
    /// A login presented another passcode for a did whose passcode is known; refused.
    Conflict,
    /// An operator reset the passcode.
    Reset,
    /// A registration of a known MAC replaced the device's passcode (re-registration policy).
    Reregistered,
    /// A registration of a known MAC would have replaced the passcode; the policy refused it.
    ReregistrationRefused,
}

impl AdoptionEventKind {
    pub const ALL: [AdoptionEventKind; 7] = [
        AdoptionEventKind::Adopted,
        AdoptionEventKind::Refused,
        AdoptionEventKind::Pinned,
        AdoptionEventKind::Conflict,
        AdoptionEventKind::Reset,
        AdoptionEventKind::Reregistered,
        AdoptionEventKind::ReregistrationRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdoptionEventKind::Adopted => "adopted",
            AdoptionEventKind::Refused => "refused",
            AdoptionEventKind::Pinned => "pinned",
            AdoptionEventKind::Conflict => "conflict",
            AdoptionEventKind::Reset => "reset",
            AdoptionEventKind::Reregistered => "reregistered",
            AdoptionEventKind::ReregistrationRefused => "reregistration_refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One coalesced event: every occurrence of one kind for one did, with a count.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdoptionEventView {
    pub did: String,
    pub kind: AdoptionEventKind,
    /// Why (refusals and conflicts), as of the last occurrence.
    pub reason: Option<String>,
    /// Source address of the last occurrence (`api:<user>` for a reset).
    pub source: Option<String>,
    /// Occurrences recorded (refusals are written at most once a minute per did; see the README).
    pub count: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdoptionEventQuery {
    pub kind: Option<AdoptionEventKind>,
    /// Whole did or a prefix (up to 22 letters and digits).
    #[param(pattern = "^[A-Za-z0-9]{0,22}$")]
    pub did: Option<String>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

// ---------------------------------------------------------------- device-side security

/// What a registration of a known MAC that would replace its passcode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationPolicy {
    /// Replace it, as the hosted cloud does (a reset GAgent makes a new passcode). The default.
    Allow,
    /// Replace it only while the device has no live session and was not seen for
    /// `offline_minutes`.
    AllowWhenOffline,
    /// Never replace it; an operator resets the passcode instead.
    Deny,
}

impl RegistrationPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationPolicy::Allow => "allow",
            RegistrationPolicy::AllowWhenOffline => "allow_when_offline",
            RegistrationPolicy::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [RegistrationPolicy::Allow, RegistrationPolicy::AllowWhenOffline, RegistrationPolicy::Deny]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// A product's re-registration policy, as set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum SetRegistrationPolicy {
    // Struct variants, so that serde refuses unknown fields on them too.
    Allow {},
    AllowWhenOffline {
        /// Minutes without a session or any sign of life before a replacement is allowed.
        #[schema(minimum = 1, maximum = 43200)]
        offline_minutes: u32,
    },
    Deny {},
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistrationView {
    pub product_key: String,
    pub policy: RegistrationPolicy,
    /// `allow_when_offline` only.
    pub offline_minutes: Option<u32>,
    /// `null` while the default (`allow`) was never changed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Device-side abuse of one product, all time (events are coalesced per did; the list is
/// `GET /products/{product_key}/adoption/events?kind=…`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceSecurityView {
    pub product_key: String,
    pub registration: RegistrationView,
    /// Wrong passcodes presented for the product's dids (MQTT logins and passcode checks).
    pub wrong_passcodes: i64,
    /// Dids that were presented a wrong passcode at least once.
    pub devices_with_wrong_passcodes: i64,
    /// Registrations that replaced a passcode (kind `reregistered`).
    pub reregistrations: i64,
    /// Registrations the policy refused (kind `reregistration_refused`).
    pub reregistrations_refused: i64,
    /// Refusals of unknown dids naming this product (kind `refused`).
    pub unknown_did_refusals: i64,
}

/// An unknown did refused where no product was named (an MQTT login, a provision, a check):
/// coalesced per did and channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnknownDeviceView {
    pub did: String,
    /// `mqtt`, `provision`, `update_and_check`, `deregister`.
    pub channel: String,
    pub reason: String,
    /// Source address of the last occurrence.
    pub source: Option<String>,
    /// Occurrences recorded (written at most once a minute per did and channel and process).
    pub count: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnknownDeviceQuery {
    /// Whole did or a prefix (letters and digits, up to 22).
    #[param(pattern = "^[A-Za-z0-9]{0,22}$")]
    pub did: Option<String>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionCount {
    #[serde(rename = "type")]
    pub fw_type: FirmwareType,
    pub hard_version: String,
    pub soft_version: String,
    pub devices: i64,
    pub online: i64,
}

// ---------------------------------------------------------------- upgrades and verification

/// Where one device is on its way to one firmware
/// (`device-protocol.md#open-question-progress-and-result-reports`: the device reports nothing but
/// versions, so stages are what the server can see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStage {
    /// Chosen, push not sent yet.
    Pending,
    /// The push (0x0211 / 0x020E / 0x0206) was sent.
    Notified,
    /// The device checked and was answered with the image.
    Checked,
    /// The device is fetching the image.
    Downloading,
    /// The whole image was sent.
    Downloaded,
    /// The device reported the target version.
    Succeeded,
    /// Something the server could see went wrong; `reason` says what.
    Failed,
    /// No success before the deadline.
    Expired,
    /// An operator cancelled it (a verification, or a cancelled rule's remaining target).
    Cancelled,
    /// An operator took the device out of its rule (`exclude`).
    Excluded,
}

impl UpgradeStage {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStage::Pending => "pending",
            UpgradeStage::Notified => "notified",
            UpgradeStage::Checked => "checked",
            UpgradeStage::Downloading => "downloading",
            UpgradeStage::Downloaded => "downloaded",
            UpgradeStage::Succeeded => "succeeded",
            UpgradeStage::Failed => "failed",
            UpgradeStage::Expired => "expired",
            UpgradeStage::Cancelled => "cancelled",
            UpgradeStage::Excluded => "excluded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            UpgradeStage::Pending,
            UpgradeStage::Notified,
            UpgradeStage::Checked,
            UpgradeStage::Downloading,
            UpgradeStage::Downloaded,
            UpgradeStage::Succeeded,
            UpgradeStage::Failed,
            UpgradeStage::Expired,
            UpgradeStage::Cancelled,
            UpgradeStage::Excluded,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Succeeded, failed, expired, cancelled and excluded end the record (a rule's failed
    /// target is retried all the same).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpgradeStage::Succeeded
                | UpgradeStage::Failed
                | UpgradeStage::Expired
                | UpgradeStage::Cancelled
                | UpgradeStage::Excluded
        )
    }
}

/// The state of a firmware's verification, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationState {
    /// Pushed; waiting for the device to report the new version before the deadline.
    Pushing,
    /// The device reported the new version; confirm with `stable: true` to verify.
    AwaitingConfirmation,
    /// Confirmed stable: the firmware is verified and locked.
    Verified,
    /// Confirmed not stable, or a failure the server saw; may be started again.
    Failed,
    /// The deadline passed without the new version; may be started again.
    Expired,
    /// Cancelled by an operator; may be started again.
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StartVerificationRequest {
    /// MAC of one online test device of the firmware's product (any case; `:` or `-` allowed).
    #[schema(pattern = "^[ :.-]*(?:[0-9A-Fa-f][ :.-]*){12}$")]
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfirmVerificationRequest {
    /// `true`: the device runs the new firmware fine, mark it verified. `false`: it does not.
    pub stable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpgradeTimes {
    pub notified_at: Option<DateTime<Utc>>,
    pub checked_at: Option<DateTime<Utc>>,
    pub download_started_at: Option<DateTime<Utc>>,
    pub downloaded_at: Option<DateTime<Utc>>,
    pub succeeded_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// What the server saw go wrong with an attempt. A device reports nothing when its own
/// checks fail (an MD5 mismatch, a flash error): the server sees a timeout, or the old
/// version reported after a completed download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The next step did not come within the stage's timeout; `stage` names the stage the
    /// record was in (`notified`: no check, `checked`: no download, `downloading`: the
    /// download did not end, `downloaded`: no report of the target version).
    Timeout,
    /// The download ended before `Content-Length` bytes were sent: the connection closed, or
    /// the gateway serving it died.
    DownloadCut,
    /// After a completed download the device reported a version other than the target.
    OldVersionReported,
    /// The operator confirmed a verification as not stable.
    NotStable,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::DownloadCut => "download_cut",
            FailureKind::OldVersionReported => "old_version_reported",
            FailureKind::NotStable => "not_stable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FailureKind::Timeout, FailureKind::DownloadCut, FailureKind::OldVersionReported, FailureKind::NotStable]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Why the current attempt failed, and in which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureView {
    pub kind: FailureKind,
    pub stage: UpgradeStage,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// The period (a rule) or the deadline (a verification) ended first.
    Expired,
    Cancelled,
    /// An operator took the device out of its rule.
    Excluded,
}

/// One finished attempt of an upgrade record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first push of a window opening, 2 for its first retry, and so on.
    pub attempt: i64,
    /// Start of the window opening the attempt belongs to (rules only).
    pub opening: Option<DateTime<Utc>>,
    pub outcome: AttemptOutcome,
    /// The stage the attempt had reached when it ended.
    pub stage: UpgradeStage,
    pub failure: Option<FailureKind>,
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerificationView {
    pub id: i64,
    pub firmware_id: i64,
    pub did: String,
    pub mac: Option<String>,
    pub state: VerificationState,
    pub stage: UpgradeStage,
    /// The version (V4: `fid N`) the device had when the verification started, and the target.
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// Why it failed, expired or was cancelled.
    pub reason: Option<String>,
    /// The failure, typed, when `state` is `failed`.
    pub failure: Option<FailureView>,
    pub times: UpgradeTimes,
    pub started_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    /// Seconds until the deadline while pushing; 0 after it.
    pub seconds_remaining: i64,
    pub confirmed_at: Option<DateTime<Utc>>,
}

// ---------------------------------------------------------------- health

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `ok` when healthy.
    pub status: String,
}
