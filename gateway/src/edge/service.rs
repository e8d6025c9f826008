//! The legacy service frames a device sends on `cli2ser_req` (`device-protocol.md#command-words`,
//! `device-protocol.md#v1v3-ota`): 0x020F (how many apps are online) and the V1V3 firmware
//! handshake 0x0205 / 0x0207.

use futures_util::StreamExt;
use gagent_codec::ServiceMessage;
use md5::{Digest, Md5};
use ota_domain::upgrades::{Check, CheckAuth};
use ota_wire::dto::{FirmwareType, PushMethod};

use super::{Edge, Session};

/// The 8-byte firmware id of V1V3 as a number (big-endian, as GK stores it).
pub fn firmware_id_to_i64(id: [u8; 8]) -> i64 {
    i64::from_be_bytes(id)
}

pub fn i64_to_firmware_id(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

impl Edge {
    pub(super) async fn service(&self, s: &Session, payload: &[u8]) {
        let message = match ServiceMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(did = %s.identity.did, error = %e, "malformed service frame dropped");
                return;
            }
        };
        match message {
            ServiceMessage::AppCountQuery => {
                // Apps are not tracked by this server; none is ever online here.
                self.reply(s, &ServiceMessage::AppCount { count: 0 }).await;
            }
            ServiceMessage::AskFirmware { product_key, firmware_id, .. } => {
                if product_key != s.identity.product_key {
                    tracing::info!(did = %s.identity.did, "0x0205 for another product key; answered with no firmware");
                    self.reply(s, &ServiceMessage::FirmwareIdReply { firmware_id: [0; 8] }).await;
                    return;
                }
                let check = Check {
                    did: s.identity.did.clone(),
                    auth: CheckAuth::Session,
                    method: PushMethod::V1V3,
                    fw_type: FirmwareType::Wifi,
                    hard: None,
                    soft: None,
                    fid: Some(firmware_id_to_i64(firmware_id)),
                    ip: None,
                    node: Some(self.settings.gateway_id.clone()),
                };
                let answer = match self.domain.device_check(check).await {
                    Ok(Ok(offer)) => offer.firmware.fid.map(i64_to_firmware_id).unwrap_or([0; 8]),
                    Ok(Err(_)) => [0; 8],
                    Err(e) => {
                        tracing::warn!(did = %s.identity.did, error = %e, "V1V3 check failed");
                        [0; 8]
                    }
                };
                self.reply(s, &ServiceMessage::FirmwareIdReply { firmware_id: answer }).await;
            }
            ServiceMessage::RequestFirmware { firmware_id } => {
                self.send_v1v3_image(s, firmware_id).await;
            }
            other => {
                tracing::info!(did = %s.identity.did, cmd = other.cmd(), "service command not served; dropped");
            }
        }
    }

    async fn reply(&self, s: &Session, message: &ServiceMessage) {
        match message.encode() {
            Ok(frame) => {
                s.send_service(&frame, false).await;
            }
            Err(e) => tracing::error!(error = %e, "could not encode a service frame"),
        }
    }

    /// 0x0207 → the image inside one PUBLISH (0x0208,
    /// `device-protocol.md#open-question-the-v1v3-blob-command`), when an open offer names it.
    async fn send_v1v3_image(&self, s: &Session, firmware_id: [u8; 8]) {
        let id = firmware_id_to_i64(firmware_id);
        let offer = match self.domain.v1v3_request(&s.identity.did, id).await {
            Ok(Some(offer)) => offer,
            Ok(None) => {
                tracing::info!(did = %s.identity.did, id, "0x0207 for firmware not offered to this device; ignored");
                return;
            }
            Err(e) => {
                tracing::warn!(did = %s.identity.did, error = %e, "V1V3 request failed");
                return;
            }
        };
        let total = offer.firmware.size.max(0) as u64;
        if total > self.settings.max_v1v3_image_bytes {
            let reason = format!("image of {total} bytes exceeds max_v1v3_image_bytes");
            let _ = self.domain.finish_offer_download(offer.upgrade_id, 0, total, Some(reason)).await;
            return;
        }
        let image = match self.domain.open_offer_download(offer.upgrade_id, &self.settings.gateway_id).await {
            Ok(Some((_, mut stream))) => {
                let mut image = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => image.extend_from_slice(&c),
                        Err(e) => {
                            let _ = self
                                .domain
                                .finish_offer_download(offer.upgrade_id, 0, total, Some(e.to_string()))
                                .await;
                            return;
                        }
                    }
                }
                image
            }
            _ => return,
        };
        let md5: [u8; 16] = Md5::digest(&image).into();
        let fw_ver = offer.firmware.soft_version.clone().unwrap_or_else(|| offer.firmware.name.clone());
        let mut fw_ver = fw_ver.into_bytes();
        fw_ver.truncate(gagent_codec::legacy::FW_VER_SLOT);
        let blob = ServiceMessage::FirmwareBlob { firmware_id, fw_ver: fw_ver.into(), md5, image: image.into() };
        let (sent, error) = match blob.encode() {
            Ok(frame) if s.send_service(&frame, true).await => (total, None),
            Ok(_) => (0, Some("the session ended before the image was queued".to_owned())),
            Err(e) => (0, Some(format!("the image cannot be framed: {e}"))),
        };
        if let Err(e) = self.domain.finish_offer_download(offer.upgrade_id, sent, total, error).await {
            tracing::warn!(error = %e, "could not record the V1V3 transfer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_ids_are_big_endian_numbers() {
        assert_eq!(firmware_id_to_i64([0, 0, 0, 0, 0, 0, 0, 1]), 1);
        assert_eq!(firmware_id_to_i64([0, 0, 0, 0, 0, 0, 1, 0]), 256);
        assert_eq!(i64_to_firmware_id(2), [0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
