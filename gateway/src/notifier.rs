//! Pushes decided by the domain, sent through the broker to whichever gateway holds the
//! device's session: the legacy frame for `ser2cli_res/<did>`
//! (`device-protocol.md#legacy-service-frame`) inside a [`PushEnvelope`] on `ota/push/<did>`,
//! so the delivering edge can acknowledge it.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gagent_codec::ServiceMessage;
use ota_domain::notify::{DeviceNotifier, PushNotice};
use ota_wire::dto::PushMethod;

use crate::bus::Bus;
use crate::device_http::{type_number, v4_download_url};
use crate::push::PushEnvelope;

pub struct BusNotifier {
    pub bus: Bus,
    pub public_host: String,
    /// To date pushes: their deadline is now + `delivery_timeout_ms`. (Not the domain itself:
    /// the domain holds its notifier, and a notifier holding the domain would keep both, and
    /// the database pool, alive for ever.)
    pub clock: std::sync::Arc<dyn ota_domain::Clock>,
    pub delivery_timeout_ms: i64,
}

/// The frame that pushes `notice` to a device.
pub fn push_frame(notice: &PushNotice, public_host: &str) -> anyhow::Result<Bytes> {
    let message = match notice.method {
        // 0x0211 with the did appended, as the hosted cloud sends it
        // (device-protocol.md#open-question-payload-of-0x0211).
        PushMethod::V41 => {
            ServiceMessage::OtaPushV41 { fw_type: type_number(notice.fw_type), did: Some(notice.did.clone()) }
        }
        PushMethod::V4 => {
            let url = v4_download_url(
                public_host,
                &notice.product_key,
                notice.fw_type,
                notice.hard_version.as_deref().unwrap_or_default(),
                notice.soft_version.as_deref().unwrap_or_default(),
                notice.upgrade_id,
                &notice.file_name,
            );
            // 0x020E carries the fid in 4 bytes; a fid that does not fit cannot be pushed.
            let fid = u32::try_from(notice.fid.unwrap_or_default())
                .map_err(|_| anyhow::anyhow!("fid {:?} does not fit the 4-byte field of 0x020E", notice.fid))?;
            ServiceMessage::OtaPushV4 { fw_type: type_number(notice.fw_type), fid, url }
        }
        PushMethod::V1V3 => {
            ServiceMessage::FirmwareIdReply { firmware_id: notice.fid.unwrap_or_default().to_be_bytes() }
        }
    };
    Ok(message.encode()?)
}

impl DeviceNotifier for BusNotifier {
    fn notify(&self, notice: PushNotice) -> BoxFuture<'static, anyhow::Result<()>> {
        let bus = self.bus.clone();
        let frame = push_frame(&notice, &self.public_host);
        let deadline_ms = self.clock.now_ms() + self.delivery_timeout_ms;
        Box::pin(async move {
            let envelope =
                PushEnvelope { upgrade_id: notice.upgrade_id, opening: notice.opening, deadline_ms, frame: frame? };
            bus.publish(&PushEnvelope::topic(&notice.did), envelope.encode()).await?;
            Ok(())
        })
    }
}
