//! Alignment for model bytes and arenas: `Model::from_bytes` needs aligned input, and neither
//! `include_bytes!` nor `std::fs::read` promises it. [`Aligned`] wraps static data (firmware,
//! the embedded default model); [`AlignedBytes`] owns heap bytes (`std` feature).

#[cfg(feature = "std")]
use std::vec::Vec;

/// Aligns its content to 64 bytes (`repr(C, align)` keeps the field at offset 0), e.g.
/// `static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("model.srdd"));`.
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

/// A byte buffer whose start is 64-byte aligned.
#[cfg(feature = "std")]
pub struct AlignedBytes {
    words: Vec<[u64; 8]>,
    len: usize,
}

#[cfg(feature = "std")]
impl AlignedBytes {
    /// Copies `bytes` into aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = std::vec![[0u64; 8]; bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<[u64; 8], u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes {
            words,
            len: bytes.len(),
        }
    }

    /// Reads a file straight into aligned storage (no intermediate copy).
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len() as usize;
        let mut out = Self::zeroed(len);
        f.read_exact(out.as_bytes_mut())?;
        Ok(out)
    }

    /// Zeroed aligned storage of `len` bytes (an arena).
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes {
            words: std::vec![[0u64; 8]; len.div_ceil(64)],
            len,
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<[u64; 8], u8>(&self.words)[..self.len]
    }

    /// The bytes, mutably.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<[u64; 8], u8>(&mut self.words)[..self.len]
    }
}
