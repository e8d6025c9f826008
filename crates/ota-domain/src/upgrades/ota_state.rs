//! Per-device OTA bookkeeping kept beside the device row (`device_ota_state`; why a side
//! table: `docs/decisions.md`): the boot sequence seen last and the MCU image served last,
//! which together decide whether a type-2 report is the MCU's or GAgent's RAM echo of a
//! download header ([`crate::lifecycle::mcu_report`]).

use diesel::prelude::*;

use crate::db::DbConn;
use crate::error::Result;
use crate::lifecycle::{BootTrack, McuServed};
use crate::schema::device_ota_state as s;

/// One device's row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtaState {
    pub track: BootTrack,
    pub served: Option<McuServed>,
}

type Row = (Option<i64>, Option<i64>, Option<i64>, Option<String>, Option<i64>);

pub(crate) fn read(c: &mut DbConn, device_id: i64) -> Result<OtaState> {
    let row: Option<Row> = s::table
        .find(device_id)
        .select((s::provision_at, s::wifi_check_at, s::mcu_check_at, s::mcu_served_version, s::mcu_served_at))
        .first(c)
        .optional()?;
    Ok(of_row(row))
}

/// [`read`] on a cached statement (the device check's read path).
pub(crate) fn read_cached(c: &mut DbConn, device_id: i64) -> Result<OtaState> {
    let row: Option<Row> = crate::on_each_backend!(c, |c| s::table
        .find(device_id)
        .select((s::provision_at, s::wifi_check_at, s::mcu_check_at, s::mcu_served_version, s::mcu_served_at))
        .first(c)
        .optional())?;
    Ok(of_row(row))
}

fn of_row(row: Option<Row>) -> OtaState {
    match row {
        None => OtaState::default(),
        Some((provision_at, wifi_check_at, mcu_check_at, version, at)) => OtaState {
            track: BootTrack { provision_at, wifi_check_at, mcu_check_at },
            served: match (version, at) {
                (Some(version), Some(at)) => Some(McuServed { version, at }),
                _ => None,
            },
        },
    }
}

/// Writes the row when it changed.
pub(crate) fn write(c: &mut DbConn, device_id: i64, before: &OtaState, after: &OtaState) -> Result<()> {
    if before == after {
        return Ok(());
    }
    let values = (
        s::provision_at.eq(after.track.provision_at),
        s::wifi_check_at.eq(after.track.wifi_check_at),
        s::mcu_check_at.eq(after.track.mcu_check_at),
        s::mcu_served_version.eq(after.served.as_ref().map(|m| m.version.clone())),
        s::mcu_served_at.eq(after.served.as_ref().map(|m| m.at)),
    );
    let updated = diesel::update(s::table.find(device_id)).set(values.clone()).execute(c)?;
    if updated == 0 {
        diesel::insert_into(s::table).values((s::device_id.eq(device_id), values)).execute(c)?;
    }
    Ok(())
}

/// Provision seen: maybe a boot.
pub(crate) fn provisioned(c: &mut DbConn, device_id: i64, now: i64) -> Result<()> {
    let before = read(c, device_id)?;
    let after = OtaState { track: before.track.provisioned(now), served: before.served.clone() };
    write(c, device_id, &before, &after)
}

/// A V4.1 MCU image is being served: GAgent copies its `Soft-Version` into RAM now, and only
/// a boot that begins after this proves what the MCU runs.
pub(crate) fn mcu_served(c: &mut DbConn, device_id: i64, version: &str, now: i64) -> Result<()> {
    let before = read(c, device_id)?;
    let after =
        OtaState { track: before.track.served(), served: Some(McuServed { version: version.to_owned(), at: now }) };
    write(c, device_id, &before, &after)
}
