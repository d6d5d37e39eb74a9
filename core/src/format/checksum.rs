//! The file checksum: FNV-1a over 64-bit words, whole or streamed.

use super::PREFIX_LEN;

/// A fast, portable 64-bit checksum (FNV-1a over little-endian 64-bit words, then the tail bytes).
/// Not cryptographic: it detects corruption and truncation, not tampering.
pub fn checksum64(bytes: &[u8]) -> u64 {
    checksum64_from(0xcbf2_9ce4_8422_2325, bytes)
}

fn checksum64_from(mut h: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}

/// [`checksum64`] computed over bytes given in pieces of any size: `update` with `a` then `b`
/// gives the checksum of `a` followed by `b`. Lets a writer checksum a file it never holds whole.
#[derive(Clone, Debug)]
pub struct Checksum64 {
    h: u64,
    /// Bytes of an incomplete 8-byte word carried to the next `update`.
    pending: [u8; 8],
    pending_len: usize,
}

impl Default for Checksum64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum64 {
    /// The state of [`checksum64`] before any byte.
    pub const fn new() -> Self {
        Checksum64 {
            h: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            self.h = checksum64_from(self.h, &self.pending);
            self.pending_len = 0;
        }
        let whole = bytes.len() - bytes.len() % 8;
        self.h = checksum64_from(self.h, &bytes[..whole]);
        let rest = &bytes[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The checksum of every byte fed so far (an incomplete last word is hashed byte by byte,
    /// as [`checksum64`] hashes its tail).
    pub fn finish(&self) -> u64 {
        checksum64_from(self.h, &self.pending[..self.pending_len])
    }
}

/// The checksum stored at bytes 24..32 of a file: [`checksum64`] over the version, header-length
/// and file-length fields (bytes 8..24), then over everything after the prefix (32..).
/// Bytes 8..24 are two whole words, so the same value is a [`Checksum64`] fed bytes 8..24 and
/// then bytes 32.. in pieces.
pub fn file_checksum(file: &[u8]) -> u64 {
    checksum64_from(checksum64(&file[8..24]), &file[PREFIX_LEN..])
}
