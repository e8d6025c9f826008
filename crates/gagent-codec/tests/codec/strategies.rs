//! proptest strategies for every frame type.

use bytes::Bytes;
use gagent_codec::legacy::{ServiceMessage, cmd};
use gagent_codec::mqtt::{
    Connack, Connect, ConnectReturnCode, Packet, Protocol, Publish, Suback, Subscribe, Unsubscribe, Will,
};
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

// ---- MQTT ----

/// A valid topic name: non-empty, no wildcards, any other Unicode.
pub fn mqtt_topic() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_/]{1,40}",
        2 => "[^+#]{1,20}",
        1 => "[a-z]{300,700}",
    ]
}

/// A valid topic filter: non-empty, wildcards anywhere (the broker judges their placement).
pub fn mqtt_filter() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9_/+#]{1,40}", 1 => "(?s).{1,20}"]
}

pub fn mqtt_pkid() -> impl Strategy<Value = u16> {
    prop_oneof![Just(1u16), Just(u16::MAX), 1u16..=u16::MAX]
}

pub fn mqtt_connect() -> impl Strategy<Value = Connect> {
    let protocol = prop_oneof![Just(Protocol::V31), Just(Protocol::V311)];
    let will = proptest::option::of(
        (mqtt_topic(), bytes(100), 0u8..=2, any::<bool>()).prop_map(|(topic, payload, qos, retain)| Will {
            topic,
            payload,
            qos,
            retain,
        }),
    );
    let client_id = prop_oneof!["[0-9A-Za-z]{22}", any::<String>(), "[a-z]{100,400}"];
    (
        protocol,
        any::<bool>(),
        any::<u16>(),
        client_id,
        proptest::option::of(any::<String>()),
        proptest::option::of(bytes(40)),
        will,
    )
        .prop_map(|(protocol, clean_session, keep_alive, client_id, username, password, will)| Connect {
            protocol,
            clean_session,
            keep_alive,
            client_id,
            username,
            password,
            will,
        })
}

pub fn mqtt_publish(max_payload: usize) -> impl Strategy<Value = Publish> {
    (any::<bool>(), 0u8..=2, any::<bool>(), mqtt_topic(), mqtt_pkid(), bytes(max_payload)).prop_map(
        |(dup, qos, retain, topic, pkid, payload)| Publish {
            dup,
            qos,
            retain,
            topic,
            pkid: (qos > 0).then_some(pkid),
            payload,
        },
    )
}

pub fn connect_return_code() -> impl Strategy<Value = ConnectReturnCode> {
    (0u8..=5).prop_map(|code| ConnectReturnCode::try_from(code).unwrap())
}

/// Every packet kind, payloads up to `max_payload` bytes.
pub fn mqtt_packet(max_payload: usize) -> impl Strategy<Value = Packet> {
    let suback_code = prop_oneof![0u8..=2, Just(0x80u8)];
    prop_oneof![
        1 => mqtt_connect().prop_map(Packet::Connect),
        1 => (any::<bool>(), connect_return_code())
            .prop_map(|(session_present, code)| Packet::Connack(Connack { session_present, code })),
        2 => mqtt_publish(max_payload).prop_map(Packet::Publish),
        1 => mqtt_pkid().prop_map(Packet::Puback),
        1 => mqtt_pkid().prop_map(Packet::Pubrec),
        1 => mqtt_pkid().prop_map(Packet::Pubrel),
        1 => mqtt_pkid().prop_map(Packet::Pubcomp),
        1 => (mqtt_pkid(), vec((mqtt_filter(), 0u8..=2), 1..5))
            .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
        1 => (mqtt_pkid(), vec(suback_code, 1..5))
            .prop_map(|(pkid, return_codes)| Packet::Suback(Suback { pkid, return_codes })),
        1 => (mqtt_pkid(), vec(mqtt_filter(), 1..5))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
        1 => mqtt_pkid().prop_map(Packet::Unsuback),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Disconnect),
    ]
}
