//! What one simulated device is: identity, firmware generation, versions and faults.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// Which OTA generation the simulated GAgent speaks (`device-protocol.md#ota-generations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GAgent 01xx–03xx: 0x0205 / 0x0206 / 0x0207 and the firmware inside one MQTT PUBLISH
    /// (`device-protocol.md#v1v3-ota`).
    V1V3,
    /// GAgent 0400/0401 (GK): `target_fid`, fids and the 0x020E push (`device-protocol.md#v4-ota`).
    V4,
    /// GAgent 04010005+ / 0402 (GA): `update_and_check` and the 0x0211 push
    /// (`device-protocol.md#v41-ota`).
    V41,
}

impl Method {
    /// The label used in CSV files and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Method::V1V3 => "v1v3",
            Method::V4 => "v4",
            Method::V41 => "v41",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Method {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1v3" | "v3" | "v1" => Ok(Method::V1V3),
            "v4" => Ok(Method::V4),
            "v41" | "v4.1" => Ok(Method::V41),
            other => Err(SpecError::UnknownMethod(other.to_owned())),
        }
    }
}

/// MQTT protocol of the CONNECT. GA sends `MQIsdp` level 3 (`device-protocol.md#connect`,
/// `device-protocol.md#observed-connect-and-suback-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttProtocol {
    /// `MQIsdp`, level 3, as every GAgent build does.
    #[default]
    V31,
    /// `MQTT`, level 4 (not seen from GAgent; for gateway tests).
    V311,
}

/// Misbehaviour to inject. Each fault applies to every download the device makes, or only to
/// the first [`Faults::only_first`] of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// When not 0, the faults apply to this many HTTP downloads only (the first ones); later
    /// downloads go well, as when a retry meets a healthy network. (The V1V3 blob over MQTT
    /// always gets the faults.)
    pub only_first: u32,
    /// Close the download connection after half of the image (V1V3: the MQTT connection during
    /// the blob), so the download fails.
    pub drop_mid_download: bool,
    /// Flip one byte of the received image, so the MD5 check fails.
    pub corrupt_byte: bool,
    /// Once a download has been received completely (before it is checked or flashed) the device
    /// goes offline for good and never reports anything.
    pub never_return: bool,
}

/// Hardware and software version of the MCU behind the module (reply 0x02,
/// `device-protocol.md#serial-commands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McuVersions {
    /// 8 chars.
    pub hw: String,
    /// 8 chars.
    pub sw: String,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// 32 hex chars.
    pub product_key: String,
    /// 32 hex chars; `Some` makes registration and provision use the encrypted endpoints
    /// (`device-protocol.md#encrypted-registration`).
    pub product_secret: Option<String>,
    /// 12 hex chars, no separators (GA writes upper case).
    pub mac: String,
    /// The MQTT password; GA makes 10 random capitals `A`..`Y` ([`random_passcode`]).
    pub passcode: String,
    /// A pre-provisioned device skips registration.
    pub did: Option<String>,
    /// OTA generation.
    pub method: Method,
    /// 8 chars, e.g. `00ESP826`.
    pub wifi_hw: String,
    /// 8 chars, e.g. `04020019`.
    pub wifi_sw: String,
    /// `None`: no MCU, so no type 2 checks.
    pub mcu: Option<McuVersions>,
    /// CONNECT protocol.
    pub mqtt_protocol: MqttProtocol,
    /// Keep-alive of the CONNECT in seconds (GA 120).
    pub keep_alive: u16,
    /// Free text, for reports only (the cloud learns regions by other means).
    pub region: Option<String>,
    /// Injected faults.
    pub faults: Faults,
    /// V4: the fid of the last OTA'd firmware, for both types (GA 0401 sends 0, GK 1).
    /// V1V3: the 8-byte firmware id of 0x0205, as a big-endian number.
    pub current_fid: u32,
    /// An old did and passcode to DELETE after the boot-time checks (after a PK change,
    /// `device-protocol.md#deregistration`).
    pub old_identity: Option<(String, String)>,
}

impl DeviceSpec {
    /// A device with GA defaults: random passcode, no MCU, MQTT 3.1, keep-alive 120.
    pub fn new(product_key: impl Into<String>, mac: impl Into<String>, method: Method) -> Self {
        let (wifi_hw, wifi_sw) = match method {
            Method::V1V3 => ("00ESP826", "03000001"),
            Method::V4 => ("00ESP826", "04000001"),
            Method::V41 => ("00ESP826", "04020006"),
        };
        DeviceSpec {
            product_key: product_key.into(),
            product_secret: None,
            mac: mac.into(),
            passcode: random_passcode(),
            did: None,
            method,
            wifi_hw: wifi_hw.to_owned(),
            wifi_sw: wifi_sw.to_owned(),
            mcu: None,
            mqtt_protocol: MqttProtocol::V31,
            keep_alive: 120,
            region: None,
            faults: Faults::default(),
            current_fid: 0,
            old_identity: None,
        }
    }

    /// Checks the formats the firmware would guarantee (`device-protocol.md#identifiers`).
    pub fn validate(&self) -> Result<(), SpecError> {
        check_hex("product_key", &self.product_key, 32)?;
        if let Some(secret) = &self.product_secret {
            check_hex("product_secret", secret, 32)?;
        }
        check_hex("mac", &self.mac, 12)?;
        if self.passcode.is_empty() || self.passcode.len() > 16 || !self.passcode.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SpecError::Format { field: "passcode", value: self.passcode.clone() });
        }
        if let Some(did) = &self.did {
            check_alnum("did", did, 22)?;
        }
        check_alnum("wifi_hw", &self.wifi_hw, 8)?;
        check_alnum("wifi_sw", &self.wifi_sw, 8)?;
        if let Some(mcu) = &self.mcu {
            check_alnum("mcu_hw", &mcu.hw, 8)?;
            check_alnum("mcu_sw", &mcu.sw, 8)?;
        }
        Ok(())
    }

    /// The key of encrypted registration and provision: the secret hex-decoded.
    pub fn aes_key(&self) -> Option<[u8; 16]> {
        let secret = self.product_secret.as_ref()?;
        let bytes = hex::decode(secret).ok()?;
        bytes.try_into().ok()
    }
}

/// 10 random capitals in `A`..`Y`, like GA `make_rand` (`device-protocol.md#identifiers`).
pub fn random_passcode() -> String {
    let mut rng = rand::rng();
    (0..10).map(|_| char::from(b'A' + rng.random_range(0..25u8))).collect()
}

fn check_hex(field: &'static str, value: &str, len: usize) -> Result<(), SpecError> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(SpecError::Format { field, value: value.to_owned() })
    }
}

fn check_alnum(field: &'static str, value: &str, len: usize) -> Result<(), SpecError> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(SpecError::Format { field, value: value.to_owned() })
    }
}

/// A device description the firmware could not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field has the wrong length or characters.
    #[error("{field} has the wrong format: {value:?}")]
    Format {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: String,
    },
    /// Not `v1v3`, `v4` or `v41`.
    #[error("unknown OTA method {0:?} (expected v1v3, v4 or v41)")]
    UnknownMethod(String),
}

/// The firmware's timers. [`Timing::default`] is what GA does; tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// PINGREQ period (GA: 50 s).
    pub ping_interval: Duration,
    /// First PINGREQ after the third SUBACK (about 2 s,
    /// `device-protocol.md#observed-first-pingreq`).
    pub first_ping_delay: Duration,
    /// Unanswered PINGREQs before logging in again (GA: 3).
    pub max_unanswered_pings: u32,
    /// Wait for an API reply (GA: 5 s at first).
    pub http_timeout: Duration,
    /// Added to the wait after each timeout in a row (GA: 10 s).
    pub http_timeout_step: Duration,
    /// Timeouts in a row before provisioning again (GA: 10).
    pub max_http_timeouts: u32,
    /// Pause before asking again after a failed registration or provision.
    pub http_retry: Duration,
    /// Wait on a download socket before giving up (one attempt, no retry).
    pub download_timeout: Duration,
    /// Retry period after a refused CONNACK (about 6 s, for ever,
    /// `device-protocol.md#observed-refused-connack`).
    pub connack_retry: Duration,
    /// First reconnect back-off after a lost or failed MQTT connection (GA: 5 s, +10 s each).
    pub reconnect_delay: Duration,
    /// Growth of that back-off.
    pub reconnect_step: Duration,
    /// Wait for CONNACK / SUBACK.
    pub mqtt_reply_timeout: Duration,
    /// `device-protocol.md#observed-push-reaction`: a push is acted on only once this long has
    /// passed since the last HTTP activity.
    pub push_http_gap: Duration,
    /// Hourly re-provision for the time (`device-protocol.md#hourly-re-provision`). `None` disables
    /// it.
    pub reprovision_interval: Option<Duration>,
    /// Serial ACK wait for normal frames (200 ms).
    pub serial_ack: Duration,
    /// Serial ACK wait for file pieces (3000 ms).
    pub serial_piece_ack: Duration,
    /// How long GAgent waits for the MCU's 0x29 after the last piece.
    pub mcu_restart_wait: Duration,
    /// Pause between "reboot" and the next boot (GA reboots 100 ms after 0x29).
    pub reboot_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval: Duration::from_secs(50),
            first_ping_delay: Duration::from_secs(2),
            max_unanswered_pings: 3,
            http_timeout: Duration::from_secs(5),
            http_timeout_step: Duration::from_secs(10),
            max_http_timeouts: 10,
            http_retry: Duration::from_secs(5),
            download_timeout: Duration::from_secs(30),
            connack_retry: Duration::from_secs(6),
            reconnect_delay: Duration::from_secs(5),
            reconnect_step: Duration::from_secs(10),
            mqtt_reply_timeout: Duration::from_secs(10),
            push_http_gap: Duration::from_secs(5),
            reprovision_interval: Some(Duration::from_secs(3600)),
            serial_ack: Duration::from_millis(200),
            serial_piece_ack: Duration::from_millis(3000),
            mcu_restart_wait: Duration::from_secs(15),
            reboot_delay: Duration::from_millis(100),
        }
    }
}

impl Timing {
    /// Short timers for tests against a local server: everything in tens of milliseconds, except
    /// the HTTP waits, which stay long enough for a debug build of the server.
    pub fn fast() -> Self {
        Timing {
            ping_interval: Duration::from_millis(500),
            first_ping_delay: Duration::from_millis(100),
            max_unanswered_pings: 3,
            http_timeout: Duration::from_secs(5),
            http_timeout_step: Duration::from_millis(100),
            max_http_timeouts: 10,
            http_retry: Duration::from_millis(100),
            download_timeout: Duration::from_secs(10),
            connack_retry: Duration::from_millis(100),
            reconnect_delay: Duration::from_millis(100),
            reconnect_step: Duration::from_millis(100),
            mqtt_reply_timeout: Duration::from_secs(5),
            push_http_gap: Duration::ZERO,
            reprovision_interval: None,
            serial_ack: Duration::from_millis(200),
            serial_piece_ack: Duration::from_millis(3000),
            mcu_restart_wait: Duration::from_secs(5),
            reboot_delay: Duration::from_millis(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passcode_is_ten_capitals_a_to_y() {
        for _ in 0..200 {
            let pc = random_passcode();
            assert_eq!(pc.len(), 10);
            assert!(pc.bytes().all(|b| (b'A'..=b'Y').contains(&b)), "{pc}");
        }
    }

    #[test]
    fn defaults_validate() {
        let spec = DeviceSpec::new("0123456789abcdef0123456789abcdef", "5CCF7F0A1B2C", Method::V41);
        spec.validate().unwrap();
        let mut bad = spec.clone();
        bad.wifi_sw = "0402".into();
        assert!(matches!(bad.validate(), Err(SpecError::Format { field: "wifi_sw", .. })));
    }

    #[test]
    fn method_labels_round_trip() {
        for m in [Method::V1V3, Method::V4, Method::V41] {
            assert_eq!(m.label().parse::<Method>().unwrap(), m);
        }
        assert_eq!("V4.1".parse::<Method>().unwrap(), Method::V41);
    }
}
