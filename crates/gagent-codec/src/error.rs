//! The one error type of the crate.
//!
//! Every decoder returns `Result<_, CodecError>` for any input, and every encoder returns one
//! too: most fields of the protocol are length-prefixed with 1–4 bytes, so a value that does not
//! fit must be refused rather than truncated on the wire.

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame does not start with the expected magic: `00 00 00 03` for the Gizwits frames
    /// (also the version marker inside 0x0205), `FF FF` for serial frames.
    #[error("bad header: expected {expected:#x}, found {found:#x}")]
    BadHeader {
        /// The magic that was expected, as a big-endian number.
        expected: u32,
        /// What the input held at that place, as a big-endian number.
        found: u32,
    },

    /// The input ended inside a field.
    #[error("truncated input: needed at least {needed} bytes, have {have}")]
    Truncated {
        /// How many input bytes the field being read needed, counted from the start.
        needed: usize,
        /// How many bytes the input had.
        have: usize,
    },

    /// A length field disagrees with the number of bytes that follow it.
    #[error("length field says {declared} bytes, but {actual} bytes are there")]
    LengthMismatch {
        /// The value of the length field.
        declared: usize,
        /// The number of bytes actually present.
        actual: usize,
    },

    /// A variable-length integer has its continuation bit set in its fourth byte.
    #[error("variable length integer longer than 4 bytes")]
    VarLenTooLong,

    /// A value is too large for a 4-byte variable-length integer (max 268 435 455).
    #[error("{value} does not fit a 4-byte variable length integer")]
    VarLenOverflow {
        /// The value that was to be encoded.
        value: usize,
    },

    /// A standard frame with cmd 0x0093 or 0x0094 was given no sn to encode.
    #[error("cmd {cmd:#06x} must carry an sn")]
    MissingSn {
        /// The command word.
        cmd: u16,
    },

    /// A standard frame whose cmd is not 0x0093/0x0094 was given an sn to encode.
    #[error("cmd {cmd:#06x} must not carry an sn")]
    UnexpectedSn {
        /// The command word.
        cmd: u16,
    },

    /// A field is longer than its length prefix (or fixed slot) allows.
    #[error("field `{field}` is {len} bytes, at most {max} fit")]
    FieldTooLong {
        /// Name of the field, as in `proto-docs/device-protocol.md`.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length the wire format can carry.
        max: usize,
    },

    /// A message with a closed layout has bytes after its last field.
    #[error("{extra} unexpected bytes after the payload of cmd {cmd:#06x}")]
    TrailingBytes {
        /// The command word.
        cmd: u16,
        /// How many bytes were left over.
        extra: usize,
    },

    /// A text field (product key, URL, did) is not valid UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Name of the field.
        field: &'static str,
    },

    /// A typed helper was handed a frame with another command.
    #[error("expected cmd {expected:#06x}, found {found:#06x}")]
    UnexpectedCmd {
        /// The command the helper decodes.
        expected: u16,
        /// The command of the frame.
        found: u16,
    },

    /// The 8-bit sum of a serial frame does not match its checksum byte.
    #[error("serial checksum mismatch: computed {computed:#04x}, frame says {received:#04x}")]
    BadChecksum {
        /// The sum computed over len..payload.
        computed: u8,
        /// The checksum byte of the frame.
        received: u8,
    },

    /// In a serial frame an `FF` was followed by something other than the `55` stuffing byte.
    #[error("serial byte stuffing: FF followed by {next:#04x} instead of 55")]
    BadStuffing {
        /// The byte that followed the `FF`.
        next: u8,
    },

    /// A serial frame was cut short by the `FF FF` header of the next frame.
    #[error("serial frame interrupted by a new FF FF header after {have} bytes")]
    InterruptedFrame {
        /// How many (unstuffed) bytes after the header had arrived.
        have: usize,
    },

    /// A serial `len` field outside the range this decoder accepts.
    #[error("serial len {len} outside {min}..={max}")]
    InvalidLength {
        /// The value of the len field.
        len: usize,
        /// Smallest valid value (cmd + sn + flags + checksum = 5).
        min: usize,
        /// Largest value accepted.
        max: usize,
    },

    /// MQTT: the packet type nibble of the first byte is 0 or 15, reserved in 3.1 and 3.1.1.
    #[error("unknown MQTT packet type in first byte {first_byte:#04x}")]
    UnknownPacketType {
        /// The first byte of the fixed header.
        first_byte: u8,
    },

    /// MQTT: bits that the spec fixes (fixed-header flags, the reserved CONNECT flag, the
    /// CONNACK acknowledge flags, will bits without a will) hold another value.
    #[error("MQTT {packet}: {field} {value:#04x} has reserved or inconsistent bits set")]
    ReservedBits {
        /// The packet type, e.g. `"SUBSCRIBE"`.
        packet: &'static str,
        /// Which byte: `"fixed header flags"`, `"connect flags"`, `"connack flags"`.
        field: &'static str,
        /// The byte as received (or as it would have been encoded).
        value: u8,
    },

    /// MQTT: the whole packet (fixed header + remaining length) is larger than the caller's
    /// limit. Raised as soon as the fixed header is readable, before the body arrives.
    #[error("MQTT packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge {
        /// Size of the whole packet as declared by its fixed header.
        size: usize,
        /// The limit passed to the decoder.
        max: usize,
    },

    /// MQTT CONNECT with a protocol name / level other than `MQIsdp`/3 or `MQTT`/4. A server
    /// answers CONNACK return code 1 (unacceptable protocol version) and closes.
    #[error("unsupported MQTT protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name (lossily decoded if it is not UTF-8).
        name: String,
        /// The protocol level byte.
        level: u8,
    },

    /// MQTT: a QoS value of 3 (PUBLISH, will) or a SUBSCRIBE requested-QoS byte above 2.
    #[error("MQTT {packet}: invalid QoS {qos}")]
    InvalidQos {
        /// The packet type.
        packet: &'static str,
        /// The value found.
        qos: u8,
    },

    /// MQTT: a topic name (PUBLISH, will) that is empty or contains the wildcards `+` / `#`,
    /// or an empty topic filter.
    #[error("invalid MQTT topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic or topic filter.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// MQTT: a packet identifier of 0, which 3.1 reserves as invalid and 3.1.1 forbids.
    #[error("MQTT {packet}: packet identifier 0")]
    PacketIdZero {
        /// The packet type.
        packet: &'static str,
    },

    /// MQTT PUBLISH to encode whose packet id does not match its QoS: an id is required
    /// exactly when QoS > 0.
    #[error("MQTT PUBLISH with QoS {qos} and packet id {pkid:?}: an id is required exactly when QoS > 0")]
    PublishPacketId {
        /// The QoS of the PUBLISH.
        qos: u8,
        /// Its packet id.
        pkid: Option<u16>,
    },

    /// MQTT SUBSCRIBE / UNSUBSCRIBE without a topic filter, or SUBACK without a return code.
    #[error("MQTT {packet} must carry at least one entry")]
    EmptyList {
        /// The packet type.
        packet: &'static str,
    },

    /// MQTT: a CONNACK return code above 5, or a SUBACK return code other than 0, 1, 2, 0x80.
    #[error("MQTT {packet}: invalid return code {code:#04x}")]
    InvalidReturnCode {
        /// The packet type.
        packet: &'static str,
        /// The code found.
        code: u8,
    },

    /// MQTT: the remaining length covers bytes after the last field of a packet with a closed
    /// layout (PINGREQ with remaining length 2, PUBACK with 3, bytes after a CONNECT password…).
    #[error("MQTT {packet}: {extra} unexpected bytes after the last field")]
    TrailingPacketBytes {
        /// The packet type.
        packet: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
}
