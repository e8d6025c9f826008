//! AES-128-ECB with PKCS#7 padding, for encrypted registration and provision
//! (`device-protocol.md#encrypted-registration`, `device-protocol.md#encrypted-provision`).
//!
//! The devices (RTT, LUAT ports) encrypt `mac=..&passcode=..&type=normal` with the product
//! secret, hex-decoded to 16 bytes, as the key, and send lowercase hex. ECB is what the devices
//! use; it is not a choice this server could make. The block cipher comes from the `aes`
//! crate; the ECB loop and the padding are written here to avoid another dependency.

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

const BLOCK: usize = 16;

/// Why a secret or a ciphertext was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The product secret is not exactly 32 hex characters.
    #[error("product secret must be 32 hex characters")]
    BadSecret,
    /// The ciphertext hex has an odd number of characters.
    #[error("ciphertext hex has an odd length")]
    OddHexLength,
    /// The ciphertext hex has a character that is not a hex digit.
    #[error("ciphertext hex has a non-hex character")]
    InvalidHex,
    /// The ciphertext is empty; PKCS#7 always yields at least one block.
    #[error("ciphertext is empty")]
    EmptyCiphertext,
    /// The ciphertext length is not a multiple of the 16-byte block.
    #[error("ciphertext of {len} bytes is not a multiple of 16")]
    NotBlockAligned {
        /// The ciphertext length in bytes.
        len: usize,
    },
    /// The decrypted data does not end in valid PKCS#7 padding (usually: the wrong key).
    #[error("bad PKCS#7 padding")]
    BadPadding,
}

impl CryptoError {
    /// A short stable code for logs and error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSecret => "bad_product_secret",
            Self::OddHexLength => "odd_hex_length",
            Self::InvalidHex => "invalid_hex",
            Self::EmptyCiphertext => "empty_ciphertext",
            Self::NotBlockAligned { .. } => "not_block_aligned",
            Self::BadPadding => "bad_padding",
        }
    }
}

/// The AES key of one product.
#[derive(Clone)]
pub struct ProductCipher {
    cipher: Aes128,
}

impl std::fmt::Debug for ProductCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("ProductCipher { .. }")
    }
}

impl ProductCipher {
    /// Builds the cipher from the 32-hex-character product secret (either case).
    pub fn from_secret_hex(secret: &str) -> Result<Self, CryptoError> {
        let mut key = [0u8; BLOCK];
        hex::decode_to_slice(secret.trim(), &mut key).map_err(|_| CryptoError::BadSecret)?;
        Ok(Self::from_key(key))
    }

    /// Builds the cipher from the raw 16-byte key.
    pub fn from_key(key: [u8; BLOCK]) -> Self {
        Self { cipher: Aes128::new(&GenericArray::from(key)) }
    }

    /// Encrypts with PKCS#7 padding and returns lowercase hex, as the devices expect it.
    pub fn encrypt_to_hex(&self, plain: &[u8]) -> String {
        hex::encode(self.encrypt(plain))
    }

    /// Encrypts with PKCS#7 padding.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let pad = BLOCK - plain.len() % BLOCK;
        let mut data = Vec::with_capacity(plain.len() + pad);
        data.extend_from_slice(plain);
        // `pad` is 1..=16, so it fits a byte.
        data.resize(plain.len() + pad, u8::try_from(pad).unwrap_or(0));
        for chunk in data.chunks_exact_mut(BLOCK) {
            if let Ok(block) = <[u8; BLOCK]>::try_from(&*chunk) {
                let mut block = GenericArray::from(block);
                self.cipher.encrypt_block(&mut block);
                chunk.copy_from_slice(&block);
            }
        }
        data
    }

    /// Decodes hex (either case) and decrypts, checking the padding.
    pub fn decrypt_hex(&self, hex_text: &str) -> Result<Vec<u8>, CryptoError> {
        let data = hex::decode(hex_text.trim()).map_err(|err| match err {
            hex::FromHexError::OddLength => CryptoError::OddHexLength,
            _ => CryptoError::InvalidHex,
        })?;
        self.decrypt(data)
    }

    /// Decrypts raw ciphertext, checking the padding.
    pub fn decrypt(&self, mut data: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        if data.is_empty() {
            return Err(CryptoError::EmptyCiphertext);
        }
        if !data.len().is_multiple_of(BLOCK) {
            return Err(CryptoError::NotBlockAligned { len: data.len() });
        }
        for chunk in data.chunks_exact_mut(BLOCK) {
            if let Ok(block) = <[u8; BLOCK]>::try_from(&*chunk) {
                let mut block = GenericArray::from(block);
                self.cipher.decrypt_block(&mut block);
                chunk.copy_from_slice(&block);
            }
        }
        let pad = data.last().copied().map_or(0, usize::from);
        if pad == 0 || pad > BLOCK {
            return Err(CryptoError::BadPadding);
        }
        let keep = data.len() - pad;
        if !data.iter().skip(keep).all(|&b| usize::from(b) == pad) {
            return Err(CryptoError::BadPadding);
        }
        data.truncate(keep);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIPS_KEY: &str = "000102030405060708090a0b0c0d0e0f";

    #[test]
    fn fips_197_vector() {
        let cipher = ProductCipher::from_secret_hex(FIPS_KEY).unwrap();
        let plain = hex::decode("00112233445566778899aabbccddeeff").unwrap();
        let out = cipher.encrypt_to_hex(&plain);
        // One block of data, then one whole block of padding (PKCS#7 on aligned input).
        assert_eq!(out.len(), 64);
        assert_eq!(&out[..32], "69c4e0d86a7b0430d8cdb78070b4c55a");
        assert_eq!(cipher.decrypt_hex(&out).unwrap(), plain);
        assert_eq!(cipher.decrypt_hex(&out.to_uppercase()).unwrap(), plain);
    }

    #[test]
    fn round_trips_registration_plaintext() {
        let cipher = ProductCipher::from_secret_hex("0123456789ABCDEF0123456789abcdef").unwrap();
        for plain in [
            &b"mac=5CCF7F0A1B2C&passcode=KQXBDTRLMA&type=normal"[..],
            b"did=uNMdYrcV3YN6DZhQPc5ugW",
            b"",
            b"0123456789abcdef",
            b"0123456789abcde",
        ] {
            let hex = cipher.encrypt_to_hex(plain);
            assert_eq!(hex.len() % 32, 0);
            assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_eq!(hex.len() / 2, (plain.len() / BLOCK + 1) * BLOCK);
            assert_eq!(cipher.decrypt_hex(&hex).unwrap(), plain);
        }
    }

    #[test]
    fn bad_inputs_are_distinct_errors() {
        assert_eq!(ProductCipher::from_secret_hex("0011").unwrap_err(), CryptoError::BadSecret);
        assert_eq!(ProductCipher::from_secret_hex(&"g".repeat(32)).unwrap_err(), CryptoError::BadSecret);
        assert_eq!(ProductCipher::from_secret_hex(&"0".repeat(34)).unwrap_err(), CryptoError::BadSecret);

        let cipher = ProductCipher::from_secret_hex(FIPS_KEY).unwrap();
        assert_eq!(cipher.decrypt_hex("abc").unwrap_err(), CryptoError::OddHexLength);
        assert_eq!(cipher.decrypt_hex("zz").unwrap_err(), CryptoError::InvalidHex);
        assert_eq!(cipher.decrypt_hex("").unwrap_err(), CryptoError::EmptyCiphertext);
        assert_eq!(cipher.decrypt_hex("00112233").unwrap_err(), CryptoError::NotBlockAligned { len: 4 });

        // Wrong key: the padding check catches it (with overwhelming probability for this text).
        let other = ProductCipher::from_secret_hex("ffffffffffffffffffffffffffffffff").unwrap();
        let hex = other.encrypt_to_hex(b"mac=5CCF7F0A1B2C&passcode=KQXBDTRLMA&type=normal");
        assert_eq!(cipher.decrypt_hex(&hex).unwrap_err(), CryptoError::BadPadding);

        // A padding byte of 0 or > 16, or inconsistent padding bytes.
        for last_block in [[0u8; 16], [17u8; 16], {
            let mut b = [2u8; 16];
            b[14] = 3;
            b
        }] {
            let raw = cipher.encrypt(&last_block);
            let only_first_block = raw[..16].to_vec();
            assert_eq!(cipher.decrypt(only_first_block).unwrap_err(), CryptoError::BadPadding);
        }
        assert!(format!("{cipher:?}").contains(".."));
    }
}
