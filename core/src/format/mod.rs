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
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the constants and the records: [`TensorDType`], [`WeightLayout`], [`Header`], [`TensorEntry`] |
//! | `checksum.rs` | [`checksum64`], its streaming form [`Checksum64`], [`file_checksum`] |
//! | `parse.rs` | [`parse`]: prefix, version, length, checksum and header checks |
//! | `finite.rs` | the one-pass NaN/infinity checks of float values |
//! | `source.rs` | [`FileSource`]: the tensor table walked entry by entry, each checked, as zero-copy views |

mod checksum;
mod finite;
mod parse;
mod source;
#[cfg(test)]
mod tests;

pub use checksum::{checksum64, file_checksum, Checksum64};
pub use finite::{all_finite_f16, all_finite_f32};
pub use parse::{parse, ParsedFile};
pub use source::{name_matches, FileSource};

use crate::config::ModelConfig;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// File magic.
pub const MAGIC: [u8; 8] = *b"SRDDMDL\0";
/// Format version this build reads and writes. Version 2 stores int8 weights in the panel
/// layout of [`crate::kernels::pack`] and records each tensor's [`WeightLayout`]; version 1 files
/// (int8 rows) are refused with [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion) (repack them with `srdd-tools pack`).
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

/// Rounds `x` up to a multiple of `a` (a power of two).
pub const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}
