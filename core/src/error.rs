//! The one error type of the core: every fallible operation returns [`Error`].
//!
//! Variants carry the numbers needed to act on them (sizes needed versus given, the offending
//! index), so a caller can print one clear line without the core allocating a message.

use core::fmt;

/// Everything that can go wrong in the core. No variant is ever produced by a panic path:
/// malformed model bytes, bad options and small arenas all end here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The model bytes do not start with the `.srdd` magic.
    BadMagic,
    /// The file was written by an unsupported format version.
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The bytes end before the header says they should (truncated file or include).
    Truncated {
        /// Bytes the header declares.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The checksum stored in the file does not match its contents.
    ChecksumMismatch {
        /// Stored checksum.
        stored: u64,
        /// Computed checksum.
        computed: u64,
    },
    /// The postcard header or tensor table could not be decoded.
    BadHeader,
    /// A hyper-parameter in the header is out of the supported range or inconsistent.
    BadConfig(&'static str),
    /// Tensor number `index` of the table is not the tensor the architecture expects there
    /// (wrong name, shape, dtype, or a missing/extra entry).
    TensorMismatch {
        /// Position in the tensor table.
        index: u32,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A metadata key the engine reads has a value that does not parse or contradicts the
    /// configuration (e.g. `class_names` with a count other than `num_classes`).
    BadMetadata {
        /// The key.
        key: &'static str,
        /// What is wrong, with the accepted range.
        what: &'static str,
    },
    /// A tensor's bytes lie outside the file or are not aligned as its dtype needs.
    TensorOutOfBounds {
        /// Position in the tensor table.
        index: u32,
    },
    /// A float tensor (f32 or f16 values, or an int8 tensor's f32 scales) holds a NaN or an
    /// infinity: such a file would load and sample garbage, so it is refused on load.
    NonFinite {
        /// Position in the tensor table.
        index: u32,
    },
    /// The model bytes (or the arena) do not start at the alignment the core needs.
    Misaligned {
        /// Alignment needed, in bytes.
        needed: usize,
    },
    /// The caller's arena is smaller than the plan needs.
    ArenaTooSmall {
        /// Bytes the plan needs.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// A class label outside `0..=num_classes` (the last value is the null class).
    ClassOutOfRange {
        /// Label given.
        label: u32,
        /// Number of real classes (labels `0..num_classes`, `num_classes` = null).
        num_classes: u32,
    },
    /// A sampling option is out of range (cfg, top-k, top-p, temperature).
    BadOption(&'static str),
    /// A scale schedule that the model cannot run.
    BadSchedule(&'static str),
    /// A buffer handed to the core has the wrong length.
    BadLength {
        /// What buffer.
        what: &'static str,
        /// Length needed.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// A token index is not below the vocabulary size.
    TokenOutOfRange {
        /// Token given.
        token: u32,
        /// Vocabulary size.
        vocab: u32,
    },
    /// The model file has no encoder but the operation needs one.
    NoEncoder,
    /// `step` was called after the last scale, or `decode` before it.
    WrongState(&'static str),
    /// A compute backend off the host (CUDA) failed; the backend keeps the details.
    Backend(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BadMagic => write!(f, "not an .srdd model file (bad magic)"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "unsupported .srdd format version {found} (this build reads version {supported})"
            ),
            Error::Truncated { expected, found } => write!(
                f,
                "model file truncated: header declares {expected} bytes, {found} present"
            ),
            Error::ChecksumMismatch { stored, computed } => write!(
                f,
                "model file corrupt: checksum {computed:#018x} does not match stored {stored:#018x}"
            ),
            Error::BadHeader => write!(f, "model header or tensor table cannot be decoded"),
            Error::BadConfig(what) => write!(f, "bad model configuration: {what}"),
            Error::BadMetadata { key, what } => write!(f, "model metadata {key}: {what}"),
            Error::Backend(what) => write!(f, "compute backend failed: {what}"),
            Error::TensorMismatch { index, what } => {
                write!(f, "tensor table entry {index}: {what}")
            }
            Error::TensorOutOfBounds { index } => write!(
                f,
                "tensor table entry {index} points outside the file or is misaligned"
            ),
            Error::NonFinite { index } => write!(
                f,
                "tensor table entry {index} holds a non-finite value (NaN or infinity)"
            ),
            Error::Misaligned { needed } => {
                write!(f, "buffer is not aligned to {needed} bytes")
            }
            Error::ArenaTooSmall { needed, given } => write!(
                f,
                "arena too small: {needed} bytes needed, {given} given"
            ),
            Error::ClassOutOfRange { label, num_classes } => write!(
                f,
                "class {label} out of range: the model has classes 0..{} and null class {num_classes}",
                num_classes.saturating_sub(1)
            ),
            Error::BadOption(what) => write!(f, "bad option: {what}"),
            Error::BadSchedule(what) => write!(f, "bad schedule: {what}"),
            Error::BadLength {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected length {expected}, got {found}"),
            Error::TokenOutOfRange { token, vocab } => {
                write!(f, "token {token} out of range for vocabulary size {vocab}")
            }
            Error::NoEncoder => write!(
                f,
                "this model file has no VQVAE encoder (pack it without --no-encoder)"
            ),
            Error::WrongState(what) => write!(f, "wrong generator state: {what}"),
        }
    }
}

impl core::error::Error for Error {}

/// Result alias of the core.
pub type Result<T> = core::result::Result<T, Error>;
