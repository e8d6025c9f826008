//! Images served to devices: a download opens through its upgrade record (the id is in the
//! URL the device got), which moves the record to `downloading` and, for a V4.1 MCU image,
//! remembers the version served (the echo rule). How a download ends comes back as a
//! [`super::RecordEvent`].
//!
//! The device HTTP serves images from a file on the gateway's own disk
//! ([`crate::store::BlobStore::local_file`]), so the kernel can send them from the page cache
//! (`sendfile`); the V1V3 edge, which sends the image inside one MQTT packet, reads it as a
//! stream.

use std::path::PathBuf;

use diesel::prelude::*;
use ota_wire::dto::{FirmwareType, PushMethod, UpgradeStage};

use super::{apply, load, ota_state};
use crate::Domain;
use crate::error::Result;
use crate::firmware::FirmwareRecord;
use crate::lifecycle::Event;
use crate::schema::firmware;
use crate::store::BlobStream;
use crate::stored::Stored;

impl Domain {
    /// Opens the image of an offer for download as a stream, served by gateway node `node`, and
    /// records that the download started. `None` when the record is unknown or closed (a record
    /// that succeeded is still served: a V4 device reports before its download's end is
    /// recorded).
    pub async fn open_offer_download(
        &self,
        upgrade_id: i64,
        node: &str,
    ) -> Result<Option<(FirmwareRecord, BlobStream)>> {
        match self.start_offer_download(upgrade_id, node).await? {
            None => Ok(None),
            Some(fw) => {
                let stream = self.store.open(&fw.sha256).await?;
                Ok(Some((fw, stream)))
            }
        }
    }

    /// As [`Domain::open_offer_download`], but answers with a file on this node's disk that
    /// holds exactly the image ([`crate::store::BlobStore::local_file`]), for `sendfile`.
    pub async fn offer_download_file(&self, upgrade_id: i64, node: &str) -> Result<Option<(FirmwareRecord, PathBuf)>> {
        match self.start_offer_download(upgrade_id, node).await? {
            None => Ok(None),
            Some(fw) => {
                let path = self.store.local_file(&fw.sha256).await?;
                Ok(Some((fw, path)))
            }
        }
    }

    /// Records that the download of an offer started; the firmware to serve, or `None`.
    async fn start_offer_download(&self, upgrade_id: i64, node: &str) -> Result<Option<FirmwareRecord>> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let node = node.to_owned();
        self.db
            .write(move |c| {
                let Some(item) = load(c, &[upgrade_id])?.pop() else {
                    return Ok(None);
                };
                let record = &item.record;
                if !record.active && record.stage() != UpgradeStage::Succeeded {
                    return Ok(None);
                }
                let fw: FirmwareRecord =
                    firmware::table.find(record.firmware_id).select(FirmwareRecord::as_select()).first(c)?;
                apply(c, &item, &Event::DownloadStarted { node }, now, delivery)?;
                if record.active
                    && fw.push_method() == PushMethod::V41
                    && fw.fw_type() == FirmwareType::Mcu
                    && let Some(version) = &fw.soft_version
                {
                    ota_state::mcu_served(c, record.device_id, version, now)?;
                }
                Ok(Some(fw))
            })
            .await
    }

    /// Opens a firmware image by id for `latest`, which names no device: only what `latest`
    /// can offer (verified V4.1 MCU firmware), so ids cannot be walked to fetch other images.
    /// Answers with a file on this node's disk that holds exactly the image, for `sendfile`.
    pub async fn firmware_download_file(&self, firmware_id: i64) -> Result<Option<(FirmwareRecord, PathBuf)>> {
        let fw: Option<FirmwareRecord> = self
            .db
            .run(move |c| {
                Ok(firmware::table
                    .find(firmware_id)
                    .filter(firmware::verified.eq(true))
                    .filter(firmware::push_method.eq(Stored(PushMethod::V41)))
                    .filter(firmware::fw_type.eq(Stored(FirmwareType::Mcu)))
                    .select(FirmwareRecord::as_select())
                    .first(c)
                    .optional()?)
            })
            .await?;
        match fw {
            None => Ok(None),
            Some(fw) => {
                let path = self.store.local_file(&fw.sha256).await?;
                Ok(Some((fw, path)))
            }
        }
    }
}

/// How a download ended, as an event: all `total` bytes sent, or cut short.
pub fn download_end(sent: u64, total: u64, error: Option<String>) -> Event {
    if sent == total && error.is_none() {
        return Event::DownloadCompleted;
    }
    let why = error.map(|e| format!(": {e}")).unwrap_or_default();
    Event::DownloadCut { reason: format!("download cut after {sent} of {total} bytes{why}") }
}
