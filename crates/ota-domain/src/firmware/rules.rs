//! The hosted console's firmware rules, as pure functions.

use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod};

use crate::error::{DomainError, Result};

/// GAgent crashes on images smaller than about 600 bytes (it assumes its first 600-byte read
/// of a download was full); the registry refuses anything under 1 KiB.
pub const MIN_FIRMWARE_BYTES: u64 = 1024;

/// `[A-Za-z0-9_.-]`, 1–64. The console says letters, digits and underscore, but its own
/// listings show `3-v1.2` and `5-test`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(DomainError::invalid("name", "name must be 1–64 of [A-Za-z0-9_.-]")) }
}

/// Hardware and software versions are exactly 8 of `[0-9A-Za-z]`, as GAgent sends them.
pub fn is_version8(v: &str) -> bool {
    v.len() == 8 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn validate_version(field: &str, v: &str) -> Result<()> {
    if is_version8(v) {
        Ok(())
    } else {
        Err(DomainError::invalid(field, format!("{field} must be exactly 8 of [0-9A-Za-z]")))
    }
}

pub fn parse_type(v: Option<&str>) -> Result<FirmwareType> {
    let v = v.ok_or_else(|| DomainError::missing("type"))?;
    FirmwareType::parse(v).ok_or_else(|| DomainError::invalid("type", "type must be `wifi` or `mcu`"))
}

pub fn parse_push_method(v: Option<&str>) -> Result<PushMethod> {
    let v = v.ok_or_else(|| DomainError::missing("push_method"))?;
    PushMethod::parse(v)
        .ok_or_else(|| DomainError::invalid("push_method", "push_method must be `V1V3`, `V4` or `V4.1`"))
}

/// V1V3 carried only GAgent (Wi-Fi) images over MQTT.
pub fn check_method_type(method: PushMethod, fw_type: FirmwareType) -> Result<()> {
    if method == PushMethod::V1V3 && fw_type != FirmwareType::Wifi {
        return Err(DomainError::invalid("push_method", "V1V3 firmware must be of type `wifi`"));
    }
    Ok(())
}

/// `GAgent_<hw8>_<sw8>_<YYMMDDHH>.bin` → (hw, sw), the official image naming.
pub fn versions_from_file_name(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_suffix(".bin")?;
    let mut parts = stem.strip_prefix("GAgent_")?.split('_');
    let (hw, sw, stamp) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && is_version8(hw)
        && is_version8(sw)
        && stamp.len() == 8
        && stamp.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| (hw.to_owned(), sw.to_owned()))
}

/// Wi-Fi images are `.bin`; MCU images `.bin` or `.hex`. GAgent picks the serial mode from the
/// extension, so it must be right.
pub fn check_extension(fw_type: FirmwareType, extension: Option<&str>) -> Result<()> {
    let ok = matches!((fw_type, extension), (_, Some("bin")) | (FirmwareType::Mcu, Some("hex")));
    if ok {
        return Ok(());
    }
    let allowed = match fw_type {
        FirmwareType::Wifi => ".bin",
        FirmwareType::Mcu => ".bin or .hex",
    };
    Err(DomainError::field(
        ErrorCode::InvalidFileExtension,
        "file",
        format!("{} firmware files must be {allowed}", fw_type.as_str()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["v1.0", "3-v1.2", "5-test", "A_b", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "v1/0", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert!(is_version8("04020019"));
        assert!(is_version8("00ESP826"));
        assert!(!is_version8("0402001"));
        assert!(!is_version8("040200190"));
        assert!(!is_version8("0402-019"));
    }

    #[test]
    fn file_names() {
        assert_eq!(
            versions_from_file_name("GAgent_00ESP826_04020019_16101715.bin"),
            Some(("00ESP826".into(), "04020019".into()))
        );
        assert_eq!(versions_from_file_name("GAgent_00ESP826_04020019_1610171.bin"), None);
        assert_eq!(versions_from_file_name("GAgent_00ESP826_04020019_16101715.hex"), None);
        assert_eq!(versions_from_file_name("fw.bin"), None);
    }

    #[test]
    fn extensions_and_method_type() {
        assert!(check_extension(FirmwareType::Wifi, Some("bin")).is_ok());
        assert!(check_extension(FirmwareType::Wifi, Some("hex")).is_err());
        assert!(check_extension(FirmwareType::Mcu, Some("hex")).is_ok());
        assert!(check_extension(FirmwareType::Mcu, None).is_err());
        assert!(check_method_type(PushMethod::V1V3, FirmwareType::Mcu).is_err());
        assert!(check_method_type(PushMethod::V4, FirmwareType::Mcu).is_ok());
    }
}
