//! A faithful GAgent device simulator: devices that behave like the firmware, byte by byte,
//! over real sockets, so tests against the server prove that real (unflashable) devices work.
//!
//! Citations such as `device-protocol.md#mqtt-login` name a heading of the repository's
//! `proto-docs/device-protocol.md`, the device protocol in our own words.
//!
//! | module | what |
//! |---|---|
//! | [`spec`] | [`DeviceSpec`]: identity, method (V1V3 / V4 / V4.1), versions, faults; [`Timing`] |
//! | [`http`] | requests spelled like the firmware, replies parsed like GA (substring search in the raw 1024-byte buffer) |
//! | [`net`] | fresh TCP connection per request, one `recv` for API replies, 600-byte first read of downloads |
//! | [`mqtt_io`] | the single-read MQTT receive path: first packet handled, the rest lost |
//! | [`mcu`] | MCU OTA over in-process serial frames (0x19 → 0x1B → 0x1D …, 0x29) |
//! | [`device`] | [`Device`] / [`DeviceHandle`]: the firmware's boot sequence, pushes, reboots |
//! | [`fleet`] | [`Fleet`]: thousands of devices in one process, progress line, [`FleetReport`] |
//! | [`cli`] | [`SimArgs`] and [`run`], mounted by the `ota` binary as `ota sim` |
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ota_sim::{Device, DeviceConfig, DeviceEvent, DeviceSpec, Method, McuVersions, Timing, wait_event};
//! use std::time::Duration;
//!
//! let mut spec = DeviceSpec::new("0123456789abcdef0123456789abcdef", "5CCF7F0A1B2C", Method::V41);
//! spec.mcu = Some(McuVersions { hw: "00000001".into(), sw: "00000001".into() });
//! let mut config = DeviceConfig::new("127.0.0.1:8081".parse()?);
//! config.timing = Timing::fast();
//! let device = Device::new(spec, config)?;
//! let mut events = device.subscribe();
//! let handle = device.spawn();
//! wait_event(&mut events, Duration::from_secs(10), |e| matches!(e, DeviceEvent::Subscribed)).await;
//! let state = handle.stop().await;
//! # let _ = state; Ok(()) }
//! ```

pub mod cli;
pub mod device;
pub mod fleet;
pub mod http;
pub mod mcu;
pub mod mqtt_io;
pub mod net;
pub mod spec;

pub use cli::{SimArgs, run};
pub use device::{
    Counters, Device, DeviceConfig, DeviceEvent, DeviceHandle, DeviceSnapshot, Offer, PushKind, Tally, wait_event,
};
pub use fleet::{Fleet, FleetMix, FleetOptions, FleetReport};
pub use mcu::McuBehaviour;
pub use spec::{DeviceSpec, Faults, McuVersions, Method, MqttProtocol, SpecError, Timing};
