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
        /// Name of the field, as in the protocol reference.
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
}
