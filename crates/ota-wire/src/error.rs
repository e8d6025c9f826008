//! The public catalogue of error codes.
//!
//! Every error the REST API returns is `{"code", "message", "details"}` where `code` is one of
//! the snake_case names below. Codes are stable: a frontend or CI script may match on them.
//! Each code has exactly one HTTP status and one meaning; `proto-docs/errors.md` lists them
//! and a test keeps that file and this table equal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = ($code:literal, $status:literal), )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in catalogue order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The snake_case name sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code is always sent with.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// One sentence saying what the code means.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => concat!($($doc),*).trim_ascii(),)* }
            }
        }
    };
}

error_codes! {
    // --- request shape ---
    /// The request body is not valid JSON or does not match the expected schema.
    InvalidJson = ("invalid_json", 400),
    /// A query-string parameter is missing, malformed or out of range.
    InvalidQuery = ("invalid_query", 400),
    /// A path parameter is malformed (for example a non-numeric id).
    InvalidPath = ("invalid_path", 400),
    /// A multipart form could not be parsed, or a form field is not valid text.
    InvalidMultipart = ("invalid_multipart", 400),
    /// A required field is missing; `details.field` names it.
    MissingField = ("missing_field", 400),
    /// A field has a value that breaks its rule; `details.field` names it.
    InvalidField = ("invalid_field", 400),
    /// The request body is larger than the configured limit.
    PayloadTooLarge = ("payload_too_large", 413),
    /// The request's Content-Type is not one this endpoint accepts.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// No route matches the request path.
    RouteNotFound = ("route_not_found", 404),
    /// The route exists but not for this method; the `Allow` header lists the methods it has.
    MethodNotAllowed = ("method_not_allowed", 405),

    // --- authentication and authorization ---
    /// No credentials were sent (no `Authorization: Bearer` header).
    MissingCredentials = ("missing_credentials", 401),
    /// The credentials could not be parsed or their signature is wrong.
    InvalidCredentials = ("invalid_credentials", 401),
    /// The session token has expired; log in again.
    TokenExpired = ("token_expired", 401),
    /// The API token was revoked.
    TokenRevoked = ("token_revoked", 401),
    /// The user behind these credentials is disabled.
    UserDisabled = ("user_disabled", 401),
    /// Wrong user name or password.
    LoginFailed = ("login_failed", 401),
    /// Too many failed logins for this user name from this address (or from this address at all); retry after `details.retry_after_seconds`.
    TooManyLoginAttempts = ("too_many_login_attempts", 429),
    /// Every password check slot stayed busy past the queue deadline; retry after `Retry-After` (`details.retry_after_seconds`).
    PasswordChecksBusy = ("password_checks_busy", 503),
    /// The tenant already has as many rule event streams open as the server allows; retry after `Retry-After` (`details.retry_after_seconds`).
    TooManyEventStreams = ("too_many_event_streams", 503),
    /// The credentials lack the scope this endpoint needs; `details.required_scope` names it.
    InsufficientScope = ("insufficient_scope", 403),
    /// The action needs the tenant admin role.
    AdminRequired = ("admin_required", 403),
    /// The action needs a login session; API tokens cannot do it (changing your own password).
    SessionRequired = ("session_required", 403),
    /// The action needs an installation administrator: an admin of the installation's first tenant.
    InstallationAdminRequired = ("installation_admin_required", 403),
    /// The current password given for a password change is wrong.
    WrongPassword = ("wrong_password", 403),

    // --- resources ---
    /// No product with this key exists in your tenant.
    ProductNotFound = ("product_not_found", 404),
    /// No firmware with this id exists in your tenant.
    FirmwareNotFound = ("firmware_not_found", 404),
    /// No user with this id exists in your tenant.
    UserNotFound = ("user_not_found", 404),
    /// No API token with this id exists for your tenant.
    TokenNotFound = ("token_not_found", 404),
    /// A product with this product_key already exists.
    ProductKeyTaken = ("product_key_taken", 409),
    /// The product still has firmware or devices; delete them first.
    ProductNotEmpty = ("product_not_empty", 409),
    /// A user with this name already exists.
    UsernameTaken = ("username_taken", 409),
    /// An admin cannot disable or demote themselves (the tenant would lose its last way in); `details.field` names the field.
    SelfLockout = ("self_lockout", 409),
    /// A V4.1 firmware of this product, type, hardware and software version already exists.
    FirmwareVersionExists = ("firmware_version_exists", 409),
    /// The firmware is verified and therefore locked against edits.
    FirmwareLocked = ("firmware_locked", 409),
    /// The firmware is being pushed by a rule and cannot be deleted.
    FirmwareInUse = ("firmware_in_use", 409),
    /// No device with this did or MAC exists in your tenant (or in the named product).
    DeviceNotFound = ("device_not_found", 404),
    /// Another device of the product already has this MAC.
    DeviceMacTaken = ("device_mac_taken", 409),
    /// The did belongs to a device of another product (or another tenant).
    DeviceDidTaken = ("device_did_taken", 409),
    /// The device's passcode is known and differs; reset it (`POST /devices/{did}/passcode/reset`) first.
    PasscodePinned = ("passcode_pinned", 409),
    /// Device side: a registration would replace a known device's passcode and the product's re-registration policy refuses it.
    ReregistrationRefused = ("reregistration_refused", 403),

    // --- verification ---
    /// The verification device is not online; it must be connected to receive the push.
    DeviceOffline = ("device_offline", 409),
    /// The device cannot take this firmware: another push method, type or series, or not older; `details.reason` says which.
    DeviceNotEligible = ("device_not_eligible", 409),
    /// The firmware is already verified.
    FirmwareAlreadyVerified = ("firmware_already_verified", 409),
    /// A verification of this firmware is already running; cancel it first.
    VerificationInProgress = ("verification_in_progress", 409),
    /// This firmware has no verification (or none in the state the action needs); `details.state` gives the current one.
    VerificationNotFound = ("verification_not_found", 404),
    /// The verification device has not reported the new version yet, so it cannot be confirmed.
    VerificationNotSucceeded = ("verification_not_succeeded", 409),

    // --- imports ---
    /// The uploaded CSV cannot be read at all (no header, no `mac` column, not UTF-8); per-line problems are reported, not refused.
    InvalidCsv = ("invalid_csv", 400),

    // --- push rules ---
    /// No push rule with this request id exists in your tenant.
    RuleNotFound = ("rule_not_found", 404),
    /// No MAC list with this id exists for this product.
    MacListNotFound = ("mac_list_not_found", 404),
    /// The rule would push to no device; a rule needs at least one target to be saved.
    RuleNoTargets = ("rule_no_targets", 409),
    /// Another pushing rule already pushes the same firmware series to some of these devices; `details.rule_ids` names it.
    RuleOverlap = ("rule_overlap", 409),
    /// The action does not fit the rule's status (`details.status`), e.g. editing targets of a started rule.
    RuleWrongStatus = ("rule_wrong_status", 409),
    /// Only verified firmware can be pushed to a fleet.
    FirmwareNotVerified = ("firmware_not_verified", 409),
    /// Starting a rule needs `confirm_stable` and `accept_terms` set to true; `details.field` names the missing one.
    ConfirmationRequired = ("confirmation_required", 400),
    /// The rule's period has ended; extend `period.end` to start it again.
    RulePeriodOver = ("rule_period_over", 409),

    // --- firmware files ---
    /// The firmware file is larger than the configured limit (`details.limit_bytes`).
    FirmwareTooLarge = ("firmware_too_large", 413),
    /// The firmware file is smaller than 1 KiB; GAgent crashes on such images.
    FirmwareTooSmall = ("firmware_too_small", 400),
    /// The file extension is not allowed for this firmware type (wifi: .bin; mcu: .bin or .hex).
    InvalidFileExtension = ("invalid_file_extension", 400),
    /// The `.hex` file is not valid Intel HEX; `details.line` gives the first bad line.
    InvalidIntelHex = ("invalid_intel_hex", 400),

    // --- reruns ---
    /// This `Idempotency-Key` was already used with a different request (another method, path or content); use a new key for a new request.
    IdempotencyKeyReused = ("idempotency_key_reused", 409),
    /// A request with this `Idempotency-Key` is still running; retry after `details.retry_after_seconds` to get its answer.
    IdempotencyKeyInProgress = ("idempotency_key_in_progress", 409),

    // --- server side ---
    /// The database cannot be reached.
    DatabaseUnavailable = ("database_unavailable", 503),
    /// The device gateway could not take the push (no gateway is attached to this API, or its broker is down).
    GatewayUnavailable = ("gateway_unavailable", 503),
    /// Device gateway only: more registrations and provisions arrived at once than the gateway works on (`device_calls_in_flight`); the device tries again, as GAgent does after any status but 201 / 200.
    DeviceCallsBusy = ("device_calls_busy", 503),
    /// An unexpected error; the cause is in the server log, never in the response.
    InternalError = ("internal_error", 500),
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code; see `proto-docs/errors.md`.
    pub code: ErrorCode,
    /// Human-readable explanation; may change between releases.
    pub message: String,
    /// Structured context, e.g. `{"field": "name"}`; `null` when there is none.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_equals_as_str_and_codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
            assert!(seen.insert(code.as_str()), "duplicate code {}", code.as_str());
            assert!(!code.description().is_empty());
            assert!((400..600).contains(&code.http_status()));
        }
    }
}
