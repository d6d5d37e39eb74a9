//! Checkpoint readers: PyTorch `.pth` (zip + pickle) and `.safetensors`.
//!
//! [`read_state_dict`] / [`read_state_dict_bytes`] return a [`StateDict`]:
//! an ordered map from parameter name to [`RawTensor`] (dtype, shape and
//! contiguous row-major little-endian bytes).
//!
//! * `.pth` files are recognized by the zip magic `PK\x03\x04` and read with
//!   a restricted, torch-agnostic unpickler (`pickle.rs`) that never executes
//!   code: unknown classes become opaque placeholders, so full training
//!   checkpoints load too. `torch.rs` gives torch's storages and tensor
//!   rebuilds their meaning; strided views, storage offsets and shared
//!   storages are resolved (`pth.rs`). Every size is validated
//!   against the archive before allocating; corrupt input is an `Err`, never
//!   a panic.
//! * Anything else that parses as safetensors is read with the `safetensors`
//!   crate.
//!
//! [`open_checkpoint`] reads the same files lazily into a [`LazyCheckpoint`]
//! (the pickle or header only; one tensor per [`TensorStore::load_tensor`]),
//! which is what `pack` streams from.
//!
//! Unwrapping (`torch.rs`): a flat state dict is returned as is. A nested official VAR
//! training checkpoint (`{'epoch', 'iter', 'trainer': {'var_wo_ddp': ..,
//! 'vae_local': .., 'var_opt': ..}, 'args': ..}`) needs a [`Role`] to pick
//! the model; a dict holding a single `state_dict`/`model` entry is
//! unwrapped. Leading `_orig_mod.` (torch.compile) and `module.` (DDP) key
//! prefixes are stripped.

mod pickle;
mod pth;
mod safetensors;
mod torch;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

pub use self::pth::{
    MAX_EXPANDED_BYTES, MAX_PICKLE_BYTES, MAX_PICKLE_RATIO, MAX_STORAGE_RATIO, MAX_TOTAL_BYTES,
    PICKLE_RATIO_FLOOR,
};
pub use self::torch::strip_key_prefixes;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

/// A dense tensor: contiguous, row-major, little-endian bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Exactly `numel() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

impl RawTensor {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts a floating-point tensor to `f32` values.
    pub fn to_f32(&self) -> Result<Vec<f32>, CheckpointError> {
        self.f32_range(0..self.numel())
    }

    /// Converts elements `range` of a floating-point tensor to `f32` values (as [`Self::to_f32`]
    /// converts them), so that a large tensor can be converted a piece at a time.
    pub fn f32_range(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>, CheckpointError> {
        let size = self.dtype.size();
        let d = &self.data[range.start * size..range.end * size];
        Ok(match self.dtype {
            DType::F64 => chunks(d).map(|b| f64::from_le_bytes(b) as f32).collect(),
            DType::F32 => chunks(d).map(f32::from_le_bytes).collect(),
            DType::F16 => chunks(d)
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            DType::BF16 => chunks(d)
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
            found => {
                return Err(CheckpointError::WrongDType {
                    found,
                    wanted: "a floating-point type",
                })
            }
        })
    }

    /// Converts an integer (or bool, as 0/1) tensor to `i64` values.
    pub fn to_i64(&self) -> Result<Vec<i64>, CheckpointError> {
        let d = &self.data;
        Ok(match self.dtype {
            DType::I64 => chunks(d).map(i64::from_le_bytes).collect(),
            DType::I32 => chunks(d).map(|b| i32::from_le_bytes(b).into()).collect(),
            DType::I16 => chunks(d).map(|b| i16::from_le_bytes(b).into()).collect(),
            DType::I8 => d.iter().map(|&b| (b as i8).into()).collect(),
            DType::U8 => d.iter().map(|&b| b.into()).collect(),
            DType::Bool => d.iter().map(|&b| i64::from(b != 0)).collect(),
            found => {
                return Err(CheckpointError::WrongDType {
                    found,
                    wanted: "an integer type",
                })
            }
        })
    }
}

/// An ordered map from parameter name to tensor (keeps the file's order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDict {
    entries: Vec<(String, RawTensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor; replaces the value (keeping the position) if the
    /// key exists. Returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, tensor: RawTensor) -> Option<RawTensor> {
        let key = key.into();
        if let Some(&i) = self.index.get(&key) {
            return Some(std::mem::replace(&mut self.entries[i].1, tensor));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, tensor));
        None
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn get(&self, key: &str) -> Option<&RawTensor> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawTensor)> {
        self.entries.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// Removes a tensor, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<RawTensor> {
        let i = self.index.remove(key)?;
        let (_, t) = self.entries.remove(i);
        for (k, _) in &self.entries[i..] {
            *self.index.get_mut(k).expect("indexed") -= 1;
        }
        Some(t)
    }
}

impl IntoIterator for StateDict {
    type Item = (String, RawTensor);
    type IntoIter = std::vec::IntoIter<(String, RawTensor)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Which model to take from a checkpoint holding several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The VAR transformer (`trainer.var_wo_ddp`).
    Var,
    /// The VQVAE (`trainer.vae_local`).
    Vae,
    /// Whatever single state dict the file holds.
    Any,
}

/// Errors from reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    // The file and its container.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(String),
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("zip archive has no entry {0}")]
    MissingEntry(String),
    #[error("unsupported byte order {0:?}")]
    UnsupportedByteOrder(String),
    #[error("safetensors: {0}")]
    Safetensors(#[from] ::safetensors::SafeTensorError),

    // The pickle.
    #[error("pickle error at byte {offset}: {msg}")]
    Pickle { offset: usize, msg: String },
    #[error("pickle calls forbidden global {module}.{name}; refusing to load")]
    ForbiddenGlobal { module: String, name: String },

    // Storages and tensors.
    #[error("storage {0:?} is missing from the archive")]
    MissingStorage(String),
    #[error("storage {key:?} has {available} bytes, a tensor needs {needed}")]
    StorageTooSmall {
        key: String,
        available: u64,
        needed: u64,
    },
    #[error("unsupported dtype {0}")]
    UnsupportedDType(String),
    #[error("invalid tensor {key:?}: {msg}")]
    InvalidTensor { key: String, msg: String },
    #[error("{key:?} is not a tensor but a {found}")]
    NotATensor { key: String, found: String },
    #[error("{what} needs {bytes} bytes, over the limit of {limit}")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error("tensor has dtype {found:?}, expected {wanted}")]
    WrongDType { found: DType, wanted: &'static str },

    // Choosing the state dict.
    #[error(
        "checkpoint holds several state dicts {available:?}; pick one with Role::Var or Role::Vae"
    )]
    NestedNeedsRole { available: Vec<String> },
    #[error("checkpoint has no {role:?} state dict (available: {available:?})")]
    RoleNotFound { role: Role, available: Vec<String> },
    #[error("no state dict found: {0}")]
    NoStateDict(String),
    #[error("duplicate key {0:?} after stripping `module.`/`_orig_mod.` prefixes")]
    DuplicateKey(String),
}

const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Reads a `.pth` or `.safetensors` checkpoint from disk.
///
/// A file starting with the zip magic `PK\x03\x04` is read as a `.pth`
/// archive, anything else that parses as safetensors as safetensors.
///
/// Which state dict is returned:
/// * a flat state dict (every value a tensor) is returned whatever `role`;
/// * a nested training checkpoint (`{'trainer': {'var_wo_ddp': .., 'vae_local': ..}, ..}`)
///   gives `trainer.var_wo_ddp` for [`Role::Var`] and `trainer.vae_local` for
///   [`Role::Vae`]; [`Role::Any`] is [`CheckpointError::NestedNeedsRole`] and a
///   role without an entry [`CheckpointError::RoleNotFound`];
/// * a dict whose only state dict is a top-level `state_dict` or `model`
///   entry gives that entry.
///
/// Leading `_orig_mod.` / `module.` prefixes are stripped from every key.
/// `.pth` files are streamed from disk (only the selected tensors' storages
/// are read); safetensors files are read whole.
pub fn read_state_dict(path: &Path, role: Role) -> Result<StateDict, CheckpointError> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    if &magic[..n] == ZIP_MAGIC {
        file.rewind()?;
        return read_pth(BufReader::new(file), role);
    }
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    read_state_dict_bytes(&bytes, role)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a `.pth` or `.safetensors` checkpoint held in memory; see
/// [`read_state_dict`].
pub fn read_state_dict_bytes(bytes: &[u8], role: Role) -> Result<StateDict, CheckpointError> {
    if bytes.starts_with(ZIP_MAGIC) {
        return read_pth(Cursor::new(bytes), role);
    }
    if safetensors::looks_like_safetensors(bytes) {
        return torch::into_state_dict(safetensors::read(bytes)?);
    }
    Err(not_a_checkpoint(bytes.first().copied()))
}

/// What a file that is neither format is, from its first byte.
fn not_a_checkpoint(first: Option<u8>) -> CheckpointError {
    let hint = match first {
        Some(0x80) => "a raw pickle (legacy torch.save format, re-save with torch >= 1.6)",
        Some(_) => "neither a zip archive nor a safetensors file",
        None => "empty file",
    };
    CheckpointError::NotACheckpoint(hint.into())
}

fn read_pth<R: Read + Seek>(reader: R, role: Role) -> Result<StateDict, CheckpointError> {
    let mut archive = pth::PthArchive::open(reader)?;
    let items = torch::select(&archive.heap, &archive.root, role)?;
    torch::into_state_dict(archive.materialize(&items)?)
}

/// Read access to a checkpoint's tensors by name: what `pack` needs, implemented both by a
/// [`StateDict`] held in memory and by a [`LazyCheckpoint`] that reads one tensor at a time.
pub trait TensorStore {
    /// Every key, in file order.
    fn tensor_names(&self) -> Vec<&str>;
    /// Dtype and shape of `key`, without reading its data.
    fn tensor_meta(&self, key: &str) -> Option<(DType, &[usize])>;
    /// The tensor `key` (`None` if absent): borrowed when held in memory, read from the file
    /// otherwise.
    fn load_tensor(&self, key: &str) -> Result<Option<Cow<'_, RawTensor>>, CheckpointError>;
}

impl TensorStore for StateDict {
    fn tensor_names(&self) -> Vec<&str> {
        self.keys().collect()
    }
    fn tensor_meta(&self, key: &str) -> Option<(DType, &[usize])> {
        self.get(key).map(|t| (t.dtype, t.shape.as_slice()))
    }
    fn load_tensor(&self, key: &str) -> Result<Option<Cow<'_, RawTensor>>, CheckpointError> {
        Ok(self.get(key).map(Cow::Borrowed))
    }
}

/// A checkpoint on disk whose tensors are read one at a time: opening it reads only the
/// `.pth` pickle (and validates every view and storage entry size) or the safetensors header;
/// [`TensorStore::load_tensor`] then reads that tensor's bytes alone.
pub struct LazyCheckpoint {
    /// The file, named in read errors (they come long after opening).
    path: std::path::PathBuf,
    /// `(key, dtype, shape)` in file order, keys with `_orig_mod.`/`module.` stripped.
    keys: Vec<(String, DType, Vec<usize>)>,
    index: HashMap<String, usize>,
    /// A `RefCell` because reading moves the file position, while `pack` reads through `&self`.
    source: RefCell<LazySource>,
}

enum LazySource {
    Pth {
        archive: Box<pth::PthArchive<BufReader<File>>>,
        tensors: Vec<pth::LazyTensor>,
    },
    Safetensors {
        file: File,
        tensors: Vec<safetensors::LazyEntry>,
    },
}

impl fmt::Debug for LazyCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyCheckpoint")
            .field("tensors", &self.keys.len())
            .finish()
    }
}

/// Opens a `.pth` or `.safetensors` checkpoint for reading one tensor at a time. Selects the
/// state dict and strips key prefixes as [`read_state_dict`] does, with the same errors for
/// the pickle, the views, the storage entries' sizes and duplicate keys; a storage whose data
/// turns out shorter than its entry declares is reported when that tensor is loaded.
pub fn open_checkpoint(path: &Path, role: Role) -> Result<LazyCheckpoint, CheckpointError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut magic = [0u8; 9];
    let n = read_up_to(&mut file, &mut magic)?;
    file.rewind()?;
    let (names, source): (Vec<(String, DType, Vec<usize>)>, LazySource) =
        if magic[..n].starts_with(ZIP_MAGIC) {
            let mut archive = pth::PthArchive::open(BufReader::new(file))?;
            let items = torch::select(&archive.heap, &archive.root, role)?;
            let planned = archive.plan_lazy(&items)?;
            let names = planned
                .iter()
                .map(|(k, t)| (k.clone(), t.dtype(), t.shape().to_vec()))
                .collect();
            let tensors = planned.into_iter().map(|(_, t)| t).collect();
            (
                names,
                LazySource::Pth {
                    archive: Box::new(archive),
                    tensors,
                },
            )
        } else {
            // The same test as `looks_like_safetensors`, on the first 9 bytes and the length.
            let len = u64::from_le_bytes(magic[..8.min(n)].try_into().unwrap_or([0; 8]));
            if n < 9 || len < 2 || len > file_len - 8 || magic[8] != b'{' {
                return Err(not_a_checkpoint(magic[..n].first().copied()));
            }
            let entries = safetensors::read_lazy(&mut file, file_len)?;
            let names = entries
                .iter()
                .map(|(k, e)| (k.clone(), e.dtype, e.shape.clone()))
                .collect();
            let tensors = entries.into_iter().map(|(_, e)| e).collect();
            (names, LazySource::Safetensors { file, tensors })
        };
    let mut keys = Vec::with_capacity(names.len());
    let mut index = HashMap::with_capacity(names.len());
    for (key, dtype, shape) in names {
        let key = strip_key_prefixes(&key).to_string();
        if index.insert(key.clone(), keys.len()).is_some() {
            return Err(CheckpointError::DuplicateKey(key));
        }
        keys.push((key, dtype, shape));
    }
    Ok(LazyCheckpoint {
        path: path.to_path_buf(),
        keys,
        index,
        source: RefCell::new(source),
    })
}

impl LazyCheckpoint {
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads every tensor into a [`StateDict`] (what [`read_state_dict`] returns).
    pub fn load_all(&self) -> Result<StateDict, CheckpointError> {
        let mut sd = StateDict::new();
        for (key, _, _) in &self.keys {
            let t = self.load_tensor(key)?.expect("listed key").into_owned();
            sd.insert(key.clone(), t);
        }
        Ok(sd)
    }
}

impl TensorStore for LazyCheckpoint {
    fn tensor_names(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _, _)| k.as_str()).collect()
    }
    fn tensor_meta(&self, key: &str) -> Option<(DType, &[usize])> {
        let (_, dtype, shape) = &self.keys[*self.index.get(key)?];
        Some((*dtype, shape.as_slice()))
    }
    fn load_tensor(&self, key: &str) -> Result<Option<Cow<'_, RawTensor>>, CheckpointError> {
        let Some(&i) = self.index.get(key) else {
            return Ok(None);
        };
        let t = match &mut *self.source.borrow_mut() {
            LazySource::Pth { archive, tensors } => archive.load(&tensors[i]),
            LazySource::Safetensors { file, tensors } => safetensors::load(file, &tensors[i]),
        };
        match t {
            Ok(t) => Ok(Some(Cow::Owned(t))),
            // An I/O error says neither which file nor which tensor.
            Err(CheckpointError::Io(e)) => Err(CheckpointError::Io(std::io::Error::new(
                e.kind(),
                format!("{}, tensor {key}: {e}", self.path.display()),
            ))),
            Err(e) => Err(e),
        }
    }
}
