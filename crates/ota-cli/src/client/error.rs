//! What went wrong, by class, and the exit code of each class (documented in the README,
//! "`ota` in pipelines"). A script branches on the exit code; the server's stable error code
//! is printed with the message, so a log says exactly which step was refused and why.

use ota_wire::{ErrorBody, ErrorCode};

/// The class of a failure; each has one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A local problem: a file that cannot be read or written, a corrupt download.
    Local,
    /// The command line is wrong, or no server URL / token is configured.
    Usage,
    /// 401/403: missing, wrong, expired or too weak credentials.
    Auth,
    /// 404: the product, firmware, rule or device does not exist.
    NotFound,
    /// 409: the server refused the step in the current state (`firmware_not_verified`, …).
    Refused,
    /// 400/413/415: the request breaks a rule (`invalid_field`, `firmware_too_small`, …).
    Invalid,
    /// 5xx, 429, an unreachable server or an answer that is not the API's.
    Server,
    /// What was waited for ended badly: a rule halted, stopped or cancelled; a verification
    /// failed, expired or was cancelled.
    Ended,
    /// `--timeout` passed before the wait was over.
    Timeout,
}

impl Class {
    pub const fn exit_code(self) -> i32 {
        match self {
            Class::Local => 1,
            Class::Usage => 2,
            Class::Auth => 3,
            Class::NotFound => 4,
            Class::Refused => 5,
            Class::Invalid => 6,
            Class::Server => 7,
            Class::Ended => 8,
            Class::Timeout => 9,
        }
    }

    /// The class of an HTTP error status.
    pub fn of_status(status: u16) -> Class {
        match status {
            401 | 403 => Class::Auth,
            404 => Class::NotFound,
            409 => Class::Refused,
            400 | 405 | 413 | 415 | 422 => Class::Invalid,
            _ => Class::Server,
        }
    }
}

/// A failed command.
#[derive(Debug)]
pub struct CliError {
    pub class: Class,
    /// The server's answer, when it gave one.
    pub status: Option<u16>,
    pub body: Option<ErrorBody>,
    pub message: String,
}

impl CliError {
    pub fn new(class: Class, message: impl Into<String>) -> CliError {
        CliError { class, status: None, body: None, message: message.into() }
    }

    /// An error answer of the API.
    pub fn api(status: u16, body: ErrorBody) -> CliError {
        CliError {
            class: Class::of_status(status),
            status: Some(status),
            message: body.message.clone(),
            body: Some(body),
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        self.body.as_ref().map(|b| b.code)
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// One line for a person: `error[firmware_not_verified] (HTTP 409): only verified …`.
    pub fn human(&self) -> String {
        match (&self.body, self.status) {
            (Some(body), Some(status)) => {
                let details = body.details.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
                format!("error[{}] (HTTP {status}): {}{details}", body.code.as_str(), self.message)
            }
            _ => format!("error: {}", self.message),
        }
    }

    /// The same as JSON, for `--json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code().map(|c| c.as_str()),
                "status": self.status,
                "message": self.message,
                "details": self.body.as_ref().and_then(|b| b.details.clone()),
                "exit_code": self.class.exit_code(),
            }
        })
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(Class::Local, e.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_exit_code_and_statuses_map_to_classes() {
        let all = [
            Class::Local,
            Class::Usage,
            Class::Auth,
            Class::NotFound,
            Class::Refused,
            Class::Invalid,
            Class::Server,
            Class::Ended,
            Class::Timeout,
        ];
        let mut codes: Vec<i32> = all.iter().map(|c| c.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0));
        assert_eq!(Class::of_status(401), Class::Auth);
        assert_eq!(Class::of_status(403), Class::Auth);
        assert_eq!(Class::of_status(404), Class::NotFound);
        assert_eq!(Class::of_status(409), Class::Refused);
        assert_eq!(Class::of_status(400), Class::Invalid);
        assert_eq!(Class::of_status(413), Class::Invalid);
        assert_eq!(Class::of_status(503), Class::Server);
        assert_eq!(Class::of_status(429), Class::Server);
    }

    #[test]
    fn a_refusal_prints_the_servers_code() {
        let body = ErrorBody {
            code: ErrorCode::FirmwareNotVerified,
            message: "only verified firmware can be pushed".into(),
            details: None,
        };
        let e = CliError::api(409, body);
        assert_eq!(e.class.exit_code(), 5);
        assert!(e.human().starts_with("error[firmware_not_verified] (HTTP 409): "), "{}", e.human());
        assert_eq!(e.json()["error"]["code"], "firmware_not_verified");
    }
}
