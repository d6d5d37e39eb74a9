//! The `.srdd` file: a fixed prefix, a postcard header with every hyper-parameter, a postcard
//! tensor table, then raw tensor sections that the core views zero-copy.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"SRDDMDL\0"
//! 8       4     format version (u32 LE)
//! 12      4     header length H (u32 LE): postcard Header followed by `tensor_count` TensorEntry
//! 16      8     file length (u64 LE)
//! 24      8     checksum64 of bytes [8, 24) then [32, file length) (see `file_checksum`)
//! 32      H     postcard Header, then the tensor table (one postcard TensorEntry per tensor)
//! D             data section, D = align_up(32 + H, 64); every tensor starts 64-byte aligned
//! ```
//! Tensor offsets are relative to `D`, so the header never depends on its own encoded size.
//! Tensors appear in the canonical order of [`crate::weights::Weights::build`]; the loader checks
//! each entry's name, shape, dtype, bounds and alignment, that every float value (f32, f16, int8
//! scales) is finite, and that nothing is missing or extra.
//! All multi-byte values are little-endian (every supported target is little-endian).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::{panels_len, PanelsI8};
use crate::weights::{TensorSource, Weight};
use core::fmt;
use half::f16;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// File magic.
pub const MAGIC: [u8; 8] = *b"SRDDMDL\0";
/// Format version this build reads and writes. Version 2 stores int8 weights in the panel
/// layout of [`crate::kernels::pack`] and records each tensor's [`WeightLayout`]; version 1 files
/// (int8 rows) are refused with [`Error::UnsupportedVersion`] (repack them with `srdd-tools pack`).
pub const FORMAT_VERSION: u32 = 2;
/// Size of the fixed prefix before the postcard header.
pub const PREFIX_LEN: usize = 32;
/// Alignment of the data section and of every tensor in it.
pub const TENSOR_ALIGN: usize = 64;
/// Alignment the model bytes must start at (the host and firmware wrappers give 64).
pub const BASE_ALIGN: usize = 16;

/// Storage type of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TensorDType {
    /// f32 values.
    F32,
    /// f16 values.
    F16,
    /// int8 values with one f32 scale per output channel (first dimension), in the layout its
    /// [`WeightLayout`] names.
    I8,
    /// An [`TensorDType::I8`] Linear weight whose Linear runs with two-pass ("a16") activations
    /// ([`crate::kernels::PanelsI8::act16`]): the same bytes, a precision-plan choice that costs
    /// int8 GEMM work instead of file bytes. Added after format v2's first files; an older
    /// reader refuses such a file (an unknown dtype) rather than misreading it.
    I8A16,
}

/// How the values of a tensor are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WeightLayout {
    /// Row-major in the official shape (every f32 and f16 tensor).
    Plain,
    /// int8 panels of `nr` output channels × groups of `kr` inputs
    /// ([`crate::kernels::pack`]; a conv is one packed `cout × (cin·kw)` weight per kernel row
    /// `kh`). This build reads `nr = 16, kr = 4`.
    Panels {
        /// Output channels per panel.
        nr: u8,
        /// Inputs per group.
        kr: u8,
    },
}

impl WeightLayout {
    /// The panel layout this build's int8 kernels read and `srdd-tools pack` writes.
    pub const PANELS: WeightLayout = WeightLayout::Panels {
        nr: crate::kernels::pack::PANEL_NR as u8,
        kr: crate::kernels::pack::PANEL_KR as u8,
    };
}

impl TensorDType {
    /// Bytes per element.
    pub fn item_size(self) -> usize {
        match self {
            TensorDType::F32 => 4,
            TensorDType::F16 => 2,
            TensorDType::I8 | TensorDType::I8A16 => 1,
        }
    }
}

/// The postcard header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// All hyper-parameters and per-scale tables.
    pub config: ModelConfig,
    /// Number of [`TensorEntry`] records that follow.
    pub tensor_count: u32,
    /// Total bytes of the data section.
    pub data_len: u64,
    /// Offset (in the data section) of the UTF-8 metadata text: `key=value` lines such as
    /// `class_names=...` and the converter's provenance.
    pub meta_offset: u64,
    /// Length of the metadata text.
    pub meta_len: u64,
}

/// One tensor-table record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry<'a> {
    /// Canonical (official) name.
    pub name: &'a str,
    /// Storage type.
    pub dtype: TensorDType,
    /// Layout of the values: [`WeightLayout::Plain`], or [`WeightLayout::PANELS`] for int8.
    pub layout: WeightLayout,
    /// Shape, official layout (`[out, in]` for Linear, `[out, in, kh, kw]` for Conv).
    pub shape: Vec<u32, 4>,
    /// Byte offset of the values, relative to the data section.
    pub offset: u64,
    /// Byte length of the values (int8 panels include their zero padding).
    pub len: u64,
    /// Byte offset of the per-output-channel f32 scales (int8 only), relative to the data section.
    pub scales_offset: u64,
}

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

/// Rounds `x` up to a multiple of `a` (a power of two).
pub const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A validated view of the fixed prefix and header of an `.srdd` file.
pub struct ParsedFile<'a> {
    /// The decoded header.
    pub header: Header,
    /// The encoded tensor table (postcard records).
    pub table: &'a [u8],
    /// The data section.
    pub data: &'a [u8],
    /// The metadata text.
    pub metadata: &'a str,
}

/// Checks magic, version, length, checksum and alignment, and decodes the header.
pub fn parse(bytes: &[u8]) -> Result<ParsedFile<'_>> {
    if bytes.len() < PREFIX_LEN {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        return Err(Error::Truncated {
            expected: PREFIX_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let header_len = le_u32(bytes, 12) as usize;
    let file_len = le_u64(bytes, 16);
    if (bytes.len() as u64) < file_len {
        return Err(Error::Truncated {
            expected: file_len,
            found: bytes.len() as u64,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(BASE_ALIGN) {
        return Err(Error::Misaligned { needed: BASE_ALIGN });
    }
    if file_len < PREFIX_LEN as u64 {
        return Err(Error::BadHeader);
    }
    let file_len = file_len as usize;
    let bytes = &bytes[..file_len];
    let stored = le_u64(bytes, 24);
    let computed = file_checksum(bytes);
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    let header_end = PREFIX_LEN.checked_add(header_len).ok_or(Error::BadHeader)?;
    if header_end > file_len {
        return Err(Error::BadHeader);
    }
    let (header, table) = postcard::take_from_bytes::<Header>(&bytes[PREFIX_LEN..header_end])
        .map_err(|_| Error::BadHeader)?;
    header.config.validate()?;
    let data_start = align_up(header_end, TENSOR_ALIGN);
    let data_end = (data_start as u64).checked_add(header.data_len);
    if data_start > file_len || data_end != Some(file_len as u64) {
        return Err(Error::BadHeader);
    }
    let data = &bytes[data_start..];
    let meta_end = header
        .meta_offset
        .checked_add(header.meta_len)
        .ok_or(Error::BadHeader)?;
    if meta_end > data.len() as u64 {
        return Err(Error::BadHeader);
    }
    let metadata = core::str::from_utf8(&data[header.meta_offset as usize..meta_end as usize])
        .map_err(|_| Error::BadHeader)?;
    Ok(ParsedFile {
        header,
        table,
        data,
        metadata,
    })
}

/// Compares formatted output against a string without allocating.
struct NameEq<'s> {
    rest: &'s str,
    ok: bool,
}
impl fmt::Write for NameEq<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.ok && self.rest.starts_with(s) {
            self.rest = &self.rest[s.len()..];
        } else {
            self.ok = false;
        }
        Ok(())
    }
}

/// True when `name` is exactly what `args` formats to.
pub fn name_matches(name: &str, args: fmt::Arguments<'_>) -> bool {
    let mut eq = NameEq {
        rest: name,
        ok: true,
    };
    let _ = fmt::write(&mut eq, args);
    eq.ok && eq.rest.is_empty()
}

/// True when no value of `v` is a NaN or an infinity (exponent bits all ones).
///
/// One branch-free pass that vectorizes: adding `0x0080_0000` to a value's magnitude bits carries
/// into bit 31 exactly when its exponent is all ones, so the OR of those sums has bit 31 set iff
/// some value is non-finite. No early exit: a valid file (the common case) is read to the end
/// anyway, and the check runs once per load, after the checksum has read the same bytes.
pub fn all_finite_f32(v: &[f32]) -> bool {
    let mut acc = 0u32;
    for x in v {
        acc |= (x.to_bits() & 0x7fff_ffff) + 0x0080_0000;
    }
    acc & 0x8000_0000 == 0
}

/// [`all_finite_f32`] for f16 values (exponent mask `0x7c00`, carry into bit 15).
pub fn all_finite_f16(v: &[f16]) -> bool {
    let mut acc = 0u16;
    for x in v {
        acc |= (x.to_bits() & 0x7fff) + 0x0400;
    }
    acc & 0x8000 == 0
}

/// `Ok(v)` when every value of `v` is finite, else [`Error::NonFinite`] for table entry `index`.
fn finite_f32(index: u32, v: &[f32]) -> Result<&[f32]> {
    if all_finite_f32(v) {
        Ok(v)
    } else {
        Err(Error::NonFinite { index })
    }
}

/// [`TensorSource`] over a parsed file: hands out zero-copy views, entry by entry, checking each.
pub struct FileSource<'a> {
    table: &'a [u8],
    data: &'a [u8],
    index: u32,
    count: u32,
    weights: crate::config::WeightFormat,
}

impl<'a> FileSource<'a> {
    /// Starts reading the tensor table of `file`.
    pub fn new(file: &ParsedFile<'a>) -> Self {
        FileSource {
            table: file.table,
            data: file.data,
            index: 0,
            count: file.header.tensor_count,
            weights: file.header.config.weights,
        }
    }

    /// Fails unless every table entry was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.index != self.count {
            return Err(Error::TensorMismatch {
                index: self.index,
                what: "the file has more tensors than the architecture uses",
            });
        }
        Ok(())
    }

    fn next_entry(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<TensorEntry<'a>> {
        let index = self.index;
        if index >= self.count {
            return Err(Error::TensorMismatch {
                index,
                what: "the file has fewer tensors than the architecture needs",
            });
        }
        let (entry, rest) = postcard::take_from_bytes::<TensorEntry<'a>>(self.table)
            .map_err(|_| Error::BadHeader)?;
        self.table = rest;
        self.index += 1;
        if !name_matches(entry.name, name) {
            return Err(Error::TensorMismatch {
                index,
                what: "unexpected tensor name",
            });
        }
        if entry.shape.len() != shape.len()
            || entry
                .shape
                .iter()
                .zip(shape)
                .any(|(&a, &b)| a as usize != b)
        {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor shape differs from the header's hyper-parameters",
            });
        }
        Ok(entry)
    }

    fn slice(&self, index: u32, offset: u64, len: u64, align: usize) -> Result<&'a [u8]> {
        let oob = Error::TensorOutOfBounds { index };
        let end = offset.checked_add(len).ok_or(oob)?;
        if end > self.data.len() as u64 || !(offset as usize).is_multiple_of(align) {
            return Err(oob);
        }
        Ok(&self.data[offset as usize..end as usize])
    }

    fn values<T: bytemuck::Pod>(
        &self,
        index: u32,
        e: &TensorEntry<'a>,
        numel: usize,
    ) -> Result<&'a [T]> {
        let item = core::mem::size_of::<T>();
        if e.len != (numel as u64) * item as u64 {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor byte length differs from its shape",
            });
        }
        let raw = self.slice(index, e.offset, e.len, item)?;
        bytemuck::try_cast_slice(raw).map_err(|_| Error::TensorOutOfBounds { index })
    }
}

impl<'a> TensorSource<'a> for FileSource<'a> {
    fn float(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<&'a [f32]> {
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        if e.dtype != TensorDType::F32 || e.layout != WeightLayout::Plain {
            return Err(Error::TensorMismatch {
                index,
                what: "this tensor must be stored as plain f32",
            });
        }
        finite_f32(
            index,
            self.values::<f32>(index, &e, shape.iter().product())?,
        )
    }

    fn table(
        &mut self,
        name: fmt::Arguments<'_>,
        shape: &[usize],
    ) -> Result<crate::weights::TableRows<'a>> {
        use crate::weights::TableRows;
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        if e.layout != WeightLayout::Plain {
            return Err(Error::TensorMismatch {
                index,
                what: "an AdaLN table must be stored plain",
            });
        }
        let numel: usize = shape.iter().product();
        match e.dtype {
            TensorDType::F32 => Ok(TableRows::F32(finite_f32(
                index,
                self.values(index, &e, numel)?,
            )?)),
            TensorDType::F16 => {
                let v = self.values::<f16>(index, &e, numel)?;
                if !all_finite_f16(v) {
                    return Err(Error::NonFinite { index });
                }
                Ok(TableRows::F16(v))
            }
            TensorDType::I8 | TensorDType::I8A16 => Err(Error::TensorMismatch {
                index,
                what: "an AdaLN table must be f32 or f16",
            }),
        }
    }

    fn next_is(&mut self, name: fmt::Arguments<'_>) -> bool {
        // A peek: a malformed entry is reported by the read that follows.
        self.index < self.count
            && postcard::take_from_bytes::<TensorEntry<'a>>(self.table)
                .is_ok_and(|(e, _)| name_matches(e.name, name))
    }

    fn weight(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<Weight<'a>> {
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        let numel: usize = shape.iter().product();
        // Scratch is planned from the header's weight format: only an int8 file plans the int8
        // GEMM's activation scratch, so int8 tensors need an int8 header. The float paths need
        // no scratch, so an int8 file may keep any tensor in f16 or f32 (its precision plan).
        let allowed = match e.dtype {
            TensorDType::F32 => true,
            TensorDType::F16 => self.weights != crate::config::WeightFormat::F32,
            TensorDType::I8 | TensorDType::I8A16 => {
                self.weights == crate::config::WeightFormat::Int8
            }
        };
        if !allowed {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor dtype differs from the header's weight format",
            });
        }
        let layout = match e.dtype {
            TensorDType::I8 | TensorDType::I8A16 => WeightLayout::PANELS,
            TensorDType::F32 | TensorDType::F16 => WeightLayout::Plain,
        };
        if e.layout != layout {
            return Err(Error::TensorMismatch {
                index,
                what: "unsupported weight layout (int8 must be 16x4 panels, floats plain)",
            });
        }
        Ok(match e.dtype {
            TensorDType::F32 => Weight::F32(finite_f32(index, self.values(index, &e, numel)?)?),
            TensorDType::F16 => {
                let v = self.values::<f16>(index, &e, numel)?;
                if !all_finite_f16(v) {
                    return Err(Error::NonFinite { index });
                }
                Weight::F16(v)
            }
            TensorDType::I8 | TensorDType::I8A16 => {
                if e.dtype == TensorDType::I8A16 && shape.len() != 2 {
                    return Err(Error::TensorMismatch {
                        index,
                        what: "two-pass activations (i8a16) apply to Linear weights only",
                    });
                }
                // Linear [out, in]: one packed weight; conv [out, in, kh, kw]: kh of them.
                let (rows, k, groups) = match *shape {
                    [rows, k] => (rows, k, 1),
                    [rows, cin, kh, kw] => (rows, cin * kw, kh),
                    _ => {
                        return Err(Error::TensorMismatch {
                            index,
                            what: "an int8 tensor must be a Linear or a conv weight",
                        })
                    }
                };
                let q = self.values::<i8>(index, &e, groups * panels_len(rows, k))?;
                let raw = self.slice(index, e.scales_offset, rows as u64 * 4, 4)?;
                let scales: &[f32] = bytemuck::try_cast_slice(raw)
                    .map_err(|_| Error::TensorOutOfBounds { index })?;
                // int8 codes are always finite; their scales are f32 and are checked.
                let scales = finite_f32(index, scales)?;
                let panels =
                    PanelsI8::new(q, scales, rows, k, groups).ok_or(Error::TensorMismatch {
                        index,
                        what: "int8 panel lengths differ from the shape",
                    })?;
                Weight::I8(panels.with_act16(e.dtype == TensorDType::I8A16))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::Model;
    use std::vec::Vec;

    /// The built-in model (int8 weights, f32 norms, biases and embeddings).
    static BUILTIN: &crate::aligned::Aligned<[u8]> =
        &crate::aligned::Aligned(*include_bytes!("../../models/default-int8.srdd"));

    /// A 64-byte aligned, writable copy of `bytes`.
    fn aligned_copy(bytes: &[u8]) -> Vec<[u64; 8]> {
        let mut words = std::vec![[0u64; 8]; bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<_, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        words
    }

    /// Stores a fresh checksum, as a tool that edits the weights on purpose would.
    fn reseal(bytes: &mut [u8]) {
        let sum = file_checksum(bytes);
        bytes[24..32].copy_from_slice(&sum.to_le_bytes());
    }

    /// Table index and absolute byte offset of the first f32 tensor's first value, and of the
    /// first int8 tensor's first scale.
    fn first_f32_and_first_scale(bytes: &[u8]) -> ((u32, usize), (u32, usize)) {
        let file = parse(bytes).expect("the built-in model parses");
        let data_at = file.data.as_ptr() as usize - bytes.as_ptr() as usize;
        let (mut f32_at, mut scale_at) = (None, None);
        let mut table = file.table;
        for index in 0..file.header.tensor_count {
            let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).unwrap();
            table = rest;
            match e.dtype {
                TensorDType::F32 if f32_at.is_none() => {
                    f32_at = Some((index, data_at + e.offset as usize))
                }
                TensorDType::I8 if scale_at.is_none() => {
                    scale_at = Some((index, data_at + e.scales_offset as usize))
                }
                _ => {}
            }
        }
        (f32_at.unwrap(), scale_at.unwrap())
    }

    #[test]
    fn non_finite_weights_are_refused_with_their_table_entry() {
        let n = BUILTIN.0.len();
        let ((f32_index, f32_at), (scale_index, scale_at)) = first_f32_and_first_scale(&BUILTIN.0);
        assert!(
            Model::from_bytes(&BUILTIN.0).is_ok(),
            "the built-in model loads"
        );
        for (index, at, value) in [
            (f32_index, f32_at, f32::NAN),
            (f32_index, f32_at + 4, f32::NEG_INFINITY),
            (scale_index, scale_at, f32::INFINITY),
            (scale_index, scale_at + 8, -f32::NAN),
        ] {
            let mut words = aligned_copy(&BUILTIN.0);
            let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            reseal(bytes);
            let err = Model::from_bytes(bytes).err();
            assert_eq!(
                err,
                Some(Error::NonFinite { index }),
                "{value} at byte {at}"
            );
            assert_eq!(
                std::format!("{}", err.unwrap()),
                std::format!(
                    "tensor table entry {index} holds a non-finite value (NaN or infinity)"
                )
            );
        }
        // The largest finite values and subnormals are fine.
        for value in [f32::MAX, f32::MIN, f32::MIN_POSITIVE / 2.0, -0.0] {
            let mut words = aligned_copy(&BUILTIN.0);
            let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
            bytes[f32_at..f32_at + 4].copy_from_slice(&value.to_le_bytes());
            reseal(bytes);
            assert!(Model::from_bytes(bytes).is_ok(), "{value}");
        }
    }

    /// Byte offset in `bytes` and the entry itself of the first table entry `pick` accepts.
    fn find_entry(
        bytes: &[u8],
        pick: impl Fn(&TensorEntry<'_>) -> bool,
    ) -> (usize, usize, TensorEntry<'static>) {
        let file = parse(bytes).unwrap();
        let mut table = file.table;
        for index in 0..file.header.tensor_count as usize {
            let at = table.as_ptr() as usize - bytes.as_ptr() as usize;
            let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).unwrap();
            table = rest;
            if pick(&e) {
                let name: &'static str = std::boxed::Box::leak(e.name.into());
                return (index, at, TensorEntry { name, ..e });
            }
        }
        panic!("no such entry");
    }

    /// Two-pass activations are a Linear's: a conv entry tagged `I8A16` is refused, a Linear's
    /// loads as the int8 weight with `act16` set, and untagged int8 has it off.
    #[test]
    fn two_pass_activations_load_on_linears_only() {
        let n = BUILTIN.0.len();
        let int8 = |e: &TensorEntry<'_>| matches!(e.dtype, TensorDType::I8 | TensorDType::I8A16);
        let retagged = |pick: &dyn Fn(&TensorEntry<'_>) -> bool, dtype| {
            let (index, at, e) = find_entry(&BUILTIN.0, pick);
            let mut words = aligned_copy(&BUILTIN.0);
            let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
            let mut old = [0u8; 256];
            let old_len = postcard::to_slice(&e, &mut old).unwrap().len();
            let mut new = [0u8; 256];
            let new = postcard::to_slice(&TensorEntry { dtype, ..e.clone() }, &mut new).unwrap();
            assert_eq!(new.len(), old_len, "same encoded length");
            bytes[at..at + old_len].copy_from_slice(new);
            reseal(bytes);
            (index, e.name, words)
        };
        let (index, name, words) = retagged(&|e| int8(e) && e.shape.len() == 4, TensorDType::I8A16);
        let bytes = &bytemuck::cast_slice::<_, u8>(&words)[..n];
        let err = Model::from_bytes(bytes).err();
        assert_eq!(
            err,
            Some(Error::TensorMismatch {
                index: index as u32,
                what: "two-pass activations (i8a16) apply to Linear weights only",
            }),
            "{name}"
        );
        for dtype in [TensorDType::I8A16, TensorDType::I8] {
            let pick = |e: &TensorEntry<'_>| int8(e) && e.name == "blocks.3.ffn.fc2.weight";
            let (_, name, words) = retagged(&pick, dtype);
            let bytes = &bytemuck::cast_slice::<_, u8>(&words)[..n];
            let m = Model::from_bytes(bytes).expect("loads");
            match m.weights.var.blocks[3].fc2.w {
                crate::kernels::Weight::I8(p) => {
                    assert_eq!(p.act16, dtype == TensorDType::I8A16, "{name}")
                }
                _ => panic!("{name} is int8"),
            }
        }
    }

    #[test]
    fn chunked_checksum_equals_whole() {
        let bytes: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0usize, 1, 7, 8, 9, 63, 64, 999, 1000] {
            let whole = checksum64(&bytes[..len]);
            for piece in [1usize, 3, 8, 13, 64, 1000] {
                let mut c = Checksum64::new();
                for chunk in bytes[..len].chunks(piece) {
                    c.update(chunk);
                }
                assert_eq!(c.finish(), whole, "len {len}, pieces of {piece}");
            }
            // Uneven pieces, including empty ones.
            let mut c = Checksum64::new();
            let mut at = 0;
            for (i, step) in [0usize, 5, 0, 2, 11, 1, 30].iter().cycle().enumerate() {
                if at >= len || i > 10_000 {
                    break;
                }
                let end = (at + step).min(len);
                c.update(&bytes[at..end]);
                at = end;
            }
            c.update(&bytes[at..len]);
            assert_eq!(c.finish(), whole, "len {len}, uneven pieces");
        }
        // The file checksum: bytes 8..24, then 32.., in pieces.
        let file = &BUILTIN.0;
        let mut c = Checksum64::new();
        c.update(&file[8..24]);
        for chunk in file[PREFIX_LEN..].chunks(4093) {
            c.update(chunk);
        }
        assert_eq!(c.finish(), file_checksum(file));
    }

    #[test]
    fn finiteness_checks_see_every_non_finite_bit_pattern() {
        // Every f16: finite iff its exponent bits are not all ones.
        let all16: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for x in &all16 {
            assert_eq!(
                all_finite_f16(core::slice::from_ref(x)),
                x.is_finite(),
                "{x:?}"
            );
        }
        // f32 around the boundaries of the exponent field, both signs, at every position of a
        // slice long enough for the vectorized loop.
        let edges = [
            0x7f7f_ffffu32,
            0x7f80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0x7fff_ffff,
            0,
            1,
        ];
        for bits in edges.iter().flat_map(|&b| [b, b | 0x8000_0000]) {
            let x = f32::from_bits(bits);
            for pos in [0usize, 7, 63, 64, 99] {
                let mut v = std::vec![1.0f32; 100];
                v[pos] = x;
                assert_eq!(all_finite_f32(&v), x.is_finite(), "{bits:#010x} at {pos}");
                let mut h = std::vec![f16::ONE; 100];
                h[pos] = f16::from_f32(x);
                assert_eq!(
                    all_finite_f16(&h),
                    h[pos].is_finite(),
                    "{bits:#010x} at {pos}"
                );
            }
        }
        assert!(all_finite_f32(&[]) && all_finite_f16(&[]));
    }
}
