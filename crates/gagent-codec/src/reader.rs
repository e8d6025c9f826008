//! A bounds-checked cursor over a byte slice.
//!
//! `bytes::Buf::get_u16` and friends panic on short input; every decoder here must return an
//! error instead, so they all read through this cursor, which turns a short read into
//! [`CodecError::Truncated`] with offsets counted from the start of the frame.

use crate::error::CodecError;

pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    pos: usize,
    total: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { rest: input, pos: 0, total: input.len() }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                self.pos = self.pos.saturating_add(n);
                Ok(head)
            }
            None => Err(CodecError::Truncated { needed: self.pos.saturating_add(n), have: self.total }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let have = self.total;
        let needed = self.pos.saturating_add(N);
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| CodecError::Truncated { needed, have })
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads an MQTT-style variable length; errors carry offsets from the frame start.
    pub(crate) fn varlen(&mut self) -> Result<usize, CodecError> {
        match crate::varlen::decode(self.rest) {
            Ok((value, used)) => {
                self.take(used)?;
                Ok(value)
            }
            Err(CodecError::Truncated { needed, .. }) => {
                Err(CodecError::Truncated { needed: self.pos.saturating_add(needed), have: self.total })
            }
            Err(e) => Err(e),
        }
    }

    /// Checks the 4-byte `00 00 00 03` magic (frame header, or the version marker in 0x0205).
    pub(crate) fn gizwits_header(&mut self) -> Result<(), CodecError> {
        let found = self.array::<4>()?;
        if found == crate::GIZWITS_HEADER {
            Ok(())
        } else {
            Err(CodecError::BadHeader {
                expected: u32::from_be_bytes(crate::GIZWITS_HEADER),
                found: u32::from_be_bytes(found),
            })
        }
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.rest;
        self.pos = self.total;
        self.rest = &[];
        rest
    }

    /// For closed layouts: any byte left over is an error.
    pub(crate) fn finish(&self, cmd: u16) -> Result<(), CodecError> {
        if self.rest.is_empty() { Ok(()) } else { Err(CodecError::TrailingBytes { cmd, extra: self.rest.len() }) }
    }
}
