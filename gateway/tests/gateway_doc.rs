//! Checks every byte quoted in `proto-docs/gateway.md` against what the codec and the gateway
//! actually produce.
//!
//! The document marks each quoted block with an HTML comment right before its fence:
//! - `<!-- hex:NAME -->` then a ```` ```hex ```` block: bytes as two-digit hex tokens separated
//!   by white space; anything after `#` on a line is a comment.
//! - `<!-- reply:NAME -->` then a ```` ```http ```` block: an exact reply; every line of the
//!   block, the last (empty) one included, stands for that line followed by CRLF.
//!
//! Every marker of the document must have a case here and every case a marker, and every
//! `hex` or `http` block of the document must carry a marker.

use std::collections::BTreeMap;

use bytes::Bytes;
use gagent_codec::ServiceMessage;
use gagent_codec::mqtt::{Connack, Connect, ConnectReturnCode, Packet, Protocol, Suback, Subscribe};
use md5::{Digest, Md5};
use ota_domain::notify::PushNotice;
use ota_gateway::device_http::v4_download_url;
use ota_gateway::http::{DownloadHead, FormBuilder, HttpError, ProductCipher, api_reply, download_head, error_reply};
use ota_gateway::notifier::push_frame;
use ota_wire::dto::{FirmwareType, PushMethod};

const DOC: &str = include_str!("../../proto-docs/gateway.md");

const DID: &str = "AbCdEfGhIjKlMnOpQrStUv";
const PK: &str = "0123456789abcdef0123456789abcdef";
const PASSCODE: &str = "KQXBDTRLMA";
const SECRET: &str = "8a6c2fe94d1b7350c8e2a41f9d6b0357";
const PUBLIC_HOST: &str = "ota.example.com";
const MQTT_HOST: &str = "mqtt.example.com";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// The V4 sample: upgrade record 42 moves devices on `00ESP826` / `04000008` to fid 57.
const V4_UPGRADE_ID: i64 = 42;
const V4_FID: i64 = 57;
const V4_FILE: &str = "GAgent_00ESP826_04000009_16101715.bin";

fn notice(method: PushMethod, fw_type: FirmwareType) -> PushNotice {
    PushNotice {
        did: DID.into(),
        product_key: PK.into(),
        method,
        fw_type,
        upgrade_id: V4_UPGRADE_ID,
        firmware_id: 7,
        fid: Some(V4_FID),
        hard_version: Some("00ESP826".into()),
        soft_version: Some("04000008".into()),
        file_name: V4_FILE.into(),
        opening: None,
    }
}

fn encode(p: Packet) -> Vec<u8> {
    p.encode().expect("packet encodes").to_vec()
}

fn frame(m: &ServiceMessage) -> Vec<u8> {
    m.encode().expect("frame encodes").to_vec()
}

fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    gagent_codec::publish_qos0(topic, payload).expect("publish encodes").to_vec()
}

fn res_topic() -> String {
    format!("ser2cli_res/{DID}")
}

fn v4_url() -> String {
    v4_download_url(PUBLIC_HOST, PK, FirmwareType::Wifi, "00ESP826", "04000008", V4_UPGRADE_ID, V4_FILE)
}

/// The 0x0208 sample image: four bytes instead of a real (≥ 1 KiB) image.
const BLOB_IMAGE: [u8; 4] = [0xDE, 0xAD, 0xBE, 0xEF];

fn hex_cases() -> BTreeMap<&'static str, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert("connect-gagent", encode(Packet::Connect(Connect::gagent(Protocol::V31, DID, PASSCODE, 120))));
    m.insert("connack-accepted", encode(Packet::Connack(Connack::new(ConnectReturnCode::Accepted))));
    m.insert("connack-refused", encode(Packet::Connack(Connack::new(ConnectReturnCode::BadUsernameOrPassword))));
    m.insert("subscribe-res", encode(Packet::Subscribe(Subscribe { pkid: 2, filters: vec![(res_topic(), 0)] })));
    m.insert("suback-granted", encode(Packet::Suback(Suback { pkid: 2, return_codes: vec![0] })));
    m.insert(
        "suback-refused",
        encode(Packet::Suback(Suback { pkid: 4, return_codes: vec![gagent_codec::mqtt::suback::FAILURE] })),
    );
    let v41 = push_frame(&notice(PushMethod::V41, FirmwareType::Wifi), PUBLIC_HOST).expect("0x0211");
    m.insert("publish-v41-push", publish(&res_topic(), &v41));
    let v41_mcu = push_frame(&notice(PushMethod::V41, FirmwareType::Mcu), PUBLIC_HOST).expect("0x0211");
    m.insert("frame-0211-mcu", v41_mcu.to_vec());
    let v4 = push_frame(&notice(PushMethod::V4, FirmwareType::Wifi), PUBLIC_HOST).expect("0x020E");
    m.insert("publish-v4-push", publish(&res_topic(), &v4));
    m.insert(
        "frame-0205-ask",
        frame(&ServiceMessage::AskFirmware {
            product_key: PK.into(),
            firmware_id: 1i64.to_be_bytes(),
            busi_ver: Bytes::from_static(b"00000001"),
        }),
    );
    m.insert("publish-0205-ask", publish("cli2ser_req", m.get("frame-0205-ask").expect("above")));
    let mut v1v3 = notice(PushMethod::V1V3, FirmwareType::Wifi);
    v1v3.fid = Some(2);
    m.insert("frame-0206-offer", push_frame(&v1v3, PUBLIC_HOST).expect("0x0206").to_vec());
    m.insert("frame-0206-none", frame(&ServiceMessage::FirmwareIdReply { firmware_id: [0; 8] }));
    m.insert("frame-0207-request", frame(&ServiceMessage::RequestFirmware { firmware_id: 2i64.to_be_bytes() }));
    m.insert(
        "frame-0208-blob",
        frame(&ServiceMessage::FirmwareBlob {
            firmware_id: 2i64.to_be_bytes(),
            fw_ver: Bytes::from_static(b"03000002"),
            md5: Md5::digest(BLOB_IMAGE).into(),
            image: Bytes::from_static(&BLOB_IMAGE),
        }),
    );
    m.insert("frame-020f-query", frame(&ServiceMessage::AppCountQuery));
    m.insert("publish-020f-query", publish("cli2ser_req", &frame(&ServiceMessage::AppCountQuery)));
    m.insert("frame-0210-count", frame(&ServiceMessage::AppCount { count: 0 }));
    m
}

fn reply(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    api_reply(status, content_type, body).expect("reply fits").to_vec()
}

/// The error body of `device_http`'s `json_reply`, built the same way
/// (`device-protocol.md#open-question-the-no-update-reply`).
fn device_error(status: u16, error_code: u32, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error_code": error_code, "error_message": message, "detail_message": null });
    reply(status, JSON, body.to_string().as_bytes())
}

fn provision_body() -> String {
    // Field order of `DeviceHttp::provision_body`.
    FormBuilder::new()
        .pair("host", MQTT_HOST)
        .pair("port", 1883)
        .pair("server_ts", 1_767_225_600)
        .pair("log_host", MQTT_HOST)
        .pair("log_port", 0)
        .pair("biz_log", 0)
        .pair("sys_log", 0)
        .finish()
}

fn head(len: u64, version: Option<(&'static str, &str)>, file: &str) -> Vec<u8> {
    download_head(&DownloadHead {
        content_length: len,
        md5_hex: "3F2A9C0E5B7D4A1E8C6B2D0F9E8A7C65".into(),
        version_header: version.map(|(n, v)| (n, v.to_owned())),
        filename: file.into(),
    })
    .expect("head builds")
    .to_vec()
}

fn reply_cases() -> BTreeMap<&'static str, Vec<u8>> {
    let cipher = ProductCipher::from_secret_hex(SECRET).expect("secret");
    let did_body = FormBuilder::new().pair("did", DID).finish();
    let mut m = BTreeMap::new();
    m.insert("register-plain", reply(201, FORM, did_body.as_bytes()));
    m.insert("register-encrypted", reply(201, FORM, cipher.encrypt_to_hex(did_body.as_bytes()).as_bytes()));
    m.insert("provision-plain", reply(200, FORM, provision_body().as_bytes()));
    m.insert("provision-encrypted", reply(200, FORM, cipher.encrypt_to_hex(provision_body().as_bytes()).as_bytes()));
    m.insert("delete", reply(200, FORM, b""));
    let target = FormBuilder::new()
        .pair("target_fid", V4_FID)
        .pair("download_url", v4_url())
        .pair("firmware_version", format!("{V4_FID:08}"))
        .finish();
    m.insert("target-fid-offer", reply(200, FORM, target.as_bytes()));
    let check = FormBuilder::new()
        .pair("soft_ver", "04020021")
        .pair("download_url", format!("http://{PUBLIC_HOST}/dev/ota/v4.1/download/43"))
        .finish();
    m.insert("update-and-check-offer", reply(200, FORM, check.as_bytes()));
    let latest = FormBuilder::new()
        .pair("soft_ver", "00010003")
        .pair("download_url", format!("http://{PUBLIC_HOST}/dev/ota/v4.1/firmware/7"))
        .finish();
    m.insert("latest-offer", reply(200, FORM, latest.as_bytes()));
    m.insert("no-offer-9500", device_error(400, 9500, "Don't have a push rule id on device"));
    m.insert("no-offer-9502", device_error(400, 9502, "push rule not in effect or device already upgrade"));
    m.insert("error-credentials", device_error(403, 403, "invalid_credentials"));
    m.insert("error-not-found", device_error(404, 404, "firmware_not_found"));
    m.insert("error-http-layer", error_reply(&HttpError::BadRequestLine).expect("reply").to_vec());
    m.insert("download-v41-wifi", head(262_144, None, "GAgent_00ESP826_04020021_16110718.bin"));
    m.insert("download-v41-mcu", head(26_624, Some(("Soft-Version", "00010003")), "mcu_00010003.hex"));
    m.insert("download-v4", head(262_144, Some(("Firmware-Version", "00000057")), V4_FILE));
    m
}

/// One quoted block of the document.
#[derive(Debug)]
struct Block {
    kind: String,
    name: String,
    line: usize,
    text: Vec<String>,
}

/// Finds every marker and the fenced block after it; fails on a `hex` or `http` fence
/// without a marker, and on a marker without a fence of its kind.
fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut pending: Option<(String, String, usize)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(inner) = line.strip_prefix("<!--").and_then(|l| l.strip_suffix("-->")) {
            let inner = inner.trim();
            for kind in ["hex", "reply"] {
                if let Some(name) = inner.strip_prefix(kind).and_then(|n| n.strip_prefix(':')) {
                    assert!(pending.is_none(), "line {}: two markers in a row", i + 1);
                    pending = Some((kind.to_owned(), name.trim().to_owned(), i + 1));
                }
            }
        } else if let Some(lang) = line.strip_prefix("```") {
            let start = i + 1;
            let mut text = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim_end() != "```" {
                text.push(lines[i].to_owned());
                i += 1;
            }
            assert!(i < lines.len(), "line {start}: unclosed fence");
            let want = match lang.trim() {
                "hex" => Some("hex"),
                "http" => Some("reply"),
                _ => None,
            };
            match (want, pending.take()) {
                (Some(want), Some((kind, name, line))) => {
                    assert_eq!(want, kind, "line {line}: marker {kind}:{name} is followed by a ```{lang} block");
                    out.push(Block { kind, name, line, text });
                }
                (Some(_), None) => panic!("line {start}: a ```{} block without a marker", lang.trim()),
                (None, Some((kind, name, line))) => panic!("line {line}: marker {kind}:{name} has no block"),
                (None, None) => {}
            }
        } else if !line.is_empty()
            && let Some((kind, name, at)) = &pending
        {
            panic!("line {at}: marker {kind}:{name} is not directly followed by its block");
        }
        i += 1;
    }
    assert!(pending.is_none(), "a marker at the end of the document");
    out
}

fn parse_hex(block: &Block) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (n, line) in block.text.iter().enumerate() {
        let data = line.split('#').next().unwrap_or_default();
        for token in data.split_whitespace() {
            assert!(
                token.len() == 2 && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "hex:{} line {}: `{token}` is not a two-digit hex byte",
                block.name,
                block.line + 2 + n
            );
            bytes.push(u8::from_str_radix(token, 16).expect("checked"));
        }
    }
    bytes
}

fn parse_reply(block: &Block) -> Vec<u8> {
    let mut out = String::new();
    for line in &block.text {
        assert!(!line.contains('\r'), "reply:{}: write lines without CR", block.name);
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            hex::encode_upper(c)
                .as_bytes()
                .chunks(2)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn reply_lines(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

#[test]
fn every_quoted_block_matches_the_code() {
    let found = blocks(DOC);
    let mut expected_hex = hex_cases();
    let mut expected_reply = reply_cases();
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for block in &found {
        assert!(seen.insert(format!("{}:{}", block.kind, block.name)), "marker {}:{} twice", block.kind, block.name);
        let hex = block.kind == "hex";
        let (actual, expected) = if hex {
            (parse_hex(block), expected_hex.remove(block.name.as_str()))
        } else {
            (parse_reply(block), expected_reply.remove(block.name.as_str()))
        };
        let show = |bytes: &[u8]| if hex { hex_lines(bytes) } else { reply_lines(bytes) };
        match expected {
            None => failures
                .push(format!("the document has marker {}:{} that this test does not know", block.kind, block.name)),
            Some(expected) if expected != actual => failures.push(format!(
                "{}:{} (line {}) differs; the code gives:\n{}",
                block.kind,
                block.name,
                block.line,
                show(&expected)
            )),
            Some(_) => {}
        }
    }
    for name in expected_hex.keys() {
        failures.push(format!("the document lacks marker hex:{name}"));
    }
    for name in expected_reply.keys() {
        failures.push(format!("the document lacks marker reply:{name}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The samples themselves obey the limits the document states.
#[test]
fn samples_respect_the_device_limits() {
    for (name, bytes) in reply_cases() {
        assert!(bytes.len() <= 1024, "reply:{name} is over 1 KB");
        if name.starts_with("download-") {
            assert!(bytes.len() <= 512, "reply:{name}: the head leaves room in the first 600-byte read");
            assert!(!String::from_utf8_lossy(&bytes).contains("chunked"), "reply:{name}: downloads are not chunked");
        } else {
            assert!(bytes.ends_with(b"0\r\n\r\n"), "reply:{name}: chunked");
        }
    }
    for (name, bytes) in hex_cases() {
        assert!(bytes.len() <= 1024, "hex:{name} is over the device's 1 KB read");
    }
    // device-protocol.md#connack-handling: GAgent checks byte 0..1 non-zero and byte 3 == 0.
    assert_eq!(hex_cases()["connack-accepted"], [0x20, 0x02, 0x00, 0x00]);
    // device-protocol.md#worked-example-v41-push-publish is byte for byte the gateway's V4.1 push.
    assert_eq!(hex_cases()["publish-v41-push"].len(), 69);
    // The V4 URL names no port and carries the upgrade id before the file name.
    assert_eq!(
        v4_url(),
        format!("http://{PUBLIC_HOST}/dev/ota/download/{PK}/1/00ESP826/04000008/{V4_UPGRADE_ID}/{V4_FILE}")
    );
    // The device's frames decode back to what the gateway acts on.
    for name in ["frame-0205-ask", "frame-0207-request", "frame-020f-query"] {
        assert!(ServiceMessage::decode(&hex_cases()[name]).is_ok(), "{name}");
    }
}
