//! proptest strategies for every frame type.

use bytes::Bytes;
use gagent_codec::legacy::{ServiceMessage, cmd};
use gagent_codec::serial::{FileOffer, FilePiece, FileReady, SerialFrame};
use gagent_codec::standard::{StandardFrame, cmd_has_sn};
use proptest::collection::vec;
use proptest::prelude::*;

/// Bytes with plenty of `FF` (serial stuffing) and `00`.
pub fn wire_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => Just(0xFF),
        1 => Just(0x00),
    ]
}

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(wire_byte(), 0..=max).prop_map(Bytes::from)
}

pub fn standard_frame() -> impl Strategy<Value = StandardFrame> {
    let cmd = prop_oneof![Just(0x0090u16), Just(0x0091), Just(0x0093), Just(0x0094), any::<u16>()];
    let payload = prop_oneof![4 => bytes(200), 1 => bytes(20_000)];
    (any::<u8>(), cmd, any::<u32>(), payload).prop_map(|(flag, cmd, sn, payload)| StandardFrame {
        flag,
        cmd,
        sn: cmd_has_sn(cmd).then_some(sn),
        payload,
    })
}

const KNOWN_LEGACY: [u16; 8] = [
    cmd::ASK_FIRMWARE,
    cmd::FIRMWARE_ID_REPLY,
    cmd::REQUEST_FIRMWARE,
    cmd::FIRMWARE_BLOB,
    cmd::OTA_PUSH_V4,
    cmd::APP_COUNT_QUERY,
    cmd::APP_COUNT,
    cmd::OTA_PUSH_V41,
];

pub fn service_message() -> impl Strategy<Value = ServiceMessage> {
    prop_oneof![
        (any::<String>(), any::<[u8; 8]>(), bytes(600)).prop_map(|(product_key, firmware_id, busi_ver)| {
            ServiceMessage::AskFirmware { product_key, firmware_id, busi_ver }
        }),
        any::<[u8; 8]>().prop_map(|firmware_id| ServiceMessage::FirmwareIdReply { firmware_id }),
        any::<[u8; 8]>().prop_map(|firmware_id| ServiceMessage::RequestFirmware { firmware_id }),
        (any::<[u8; 8]>(), bytes(32), any::<[u8; 16]>(), bytes(2000)).prop_map(|(firmware_id, fw_ver, md5, image)| {
            ServiceMessage::FirmwareBlob { firmware_id, fw_ver, md5, image }
        }),
        (any::<u8>(), any::<u32>(), any::<String>()).prop_map(|(fw_type, fid, url)| ServiceMessage::OtaPushV4 {
            fw_type,
            fid,
            url
        }),
        Just(ServiceMessage::AppCountQuery),
        any::<u16>().prop_map(|count| ServiceMessage::AppCount { count }),
        (any::<u8>(), proptest::option::of("[0-9A-Za-z]{0,40}"))
            .prop_map(|(fw_type, did)| ServiceMessage::OtaPushV41 { fw_type, did }),
        (any::<u16>().prop_filter("known command", |c| !KNOWN_LEGACY.contains(c)), bytes(300))
            .prop_map(|(cmd, payload)| ServiceMessage::Unknown { cmd, payload }),
    ]
}

pub fn serial_frame() -> impl Strategy<Value = SerialFrame> {
    let payload = prop_oneof![8 => bytes(300), 1 => bytes(5000)];
    (wire_byte(), wire_byte(), any::<u16>(), payload).prop_map(|(cmd, sn, flags, payload)| SerialFrame {
        cmd,
        sn,
        flags,
        payload,
    })
}

pub fn file_offer() -> impl Strategy<Value = FileOffer> {
    (any::<u32>(), bytes(40)).prop_map(|(file_size, md5)| FileOffer { file_size, md5 })
}

pub fn file_ready() -> impl Strategy<Value = FileReady> {
    (any::<bool>(), bytes(40), any::<u16>()).prop_map(|(hex_mode, md5, piece_size)| FileReady {
        hex_mode,
        md5,
        piece_size,
    })
}

pub fn file_piece() -> impl Strategy<Value = FilePiece> {
    (any::<u16>(), any::<u16>(), bytes(300)).prop_map(|(piece_no, piece_total, data)| FilePiece {
        piece_no,
        piece_total,
        data,
    })
}

/// Splits `data` at the given (unsorted, possibly out of range) cut points.
pub fn split_at_cuts(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
}
