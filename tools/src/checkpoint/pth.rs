//! Reader for PyTorch's zip checkpoint format (`torch.save`, torch >= 1.6).
//!
//! Layout: a zip archive with `<prefix>/data.pkl` (the pickled object) and
//! one entry `<prefix>/data/<key>` per storage.
//!
//! Unpickling with the [`TorchResolver`] yields lightweight [`TensorRef`]s; only the tensors of the
//! state dict that is finally selected are materialized, reading each
//! storage at most once (and only the bytes the views need). Views are
//! resolved here: the returned [`RawTensor`]s are contiguous and row-major.
//!
//! Limits (all with checked arithmetic, validated before allocating):
//! `data.pkl` inflates to at most [`MAX_PICKLE_RATIO`] times its compressed
//! size (at least [`PICKLE_RATIO_FLOOR`]) and [`MAX_PICKLE_BYTES`] in all;
//! storage bytes read in total at most [`MAX_TOTAL_BYTES`]; a tensor larger
//! than its storage (zero or overlapping strides) at most
//! [`MAX_EXPANDED_BYTES`]; all output at most `4 x` the storage bytes read
//! plus [`MAX_EXPANDED_BYTES`].
//!
//! # Why these `data.pkl` limits
//!
//! The unpickler's memory is linear in the pickle's size but not small: 40
//! to 60 bytes per pickle byte for floods of one-byte opcodes that each
//! create an object, and under 128 in every case tested (see `pickle.rs`).
//! So the pickle's size must be bounded both absolutely and relative to the
//! bytes the file really holds.
//!
//! * What real pickles need: a state-dict pickle costs 100 to 160 bytes per
//!   tensor (measured on the fixtures in `tests/fixtures`: 2,980 bytes for
//!   25 tensors up to 36,894 bytes for 232). The official VQVAE has about
//!   250 tensors and the largest official transformers (d30, d36) about
//!   400 to 450 (`var_d16` has 220), so their `data.pkl` is well under
//!   100 KB; a full training checkpoint with optimizer state (three tensors
//!   per parameter) and its `args` stays under 1 MB.
//! * [`MAX_PICKLE_BYTES`] = 64 MiB is over 60 times that, room for pickles
//!   that carry extra payloads (RNG states, numpy arrays, logs), and bounds
//!   the unpickler's worst case to about 4 GB (8 GB at the tested bound);
//!   the former 1 GiB allowed 64 GB and more.
//! * `torch.save` stores entries uncompressed (ratio 1); re-zipped with
//!   deflate at level 9 the fixtures' pickles shrink 2.2 to 4.1 times.
//!   [`MAX_PICKLE_RATIO`] = 16 leaves four times that margin, while a
//!   deflate bomb (which reaches ~1000x) is cut off: a pickle can then cost
//!   at most about 16 x 60 bytes of memory per byte of the file (16 x 128
//!   at the tested bound).
//!   [`PICKLE_RATIO_FLOOR`] spares tiny entries, whose ratios say nothing.
//!   The compressed size is the smaller of the entry's declared one and the
//!   archive's length, so a lying header gains nothing.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;

use zip::result::ZipError;
use zip::ZipArchive;

use super::pickle::{self, Object, Value};
use super::torch::{TensorRef, TorchHeap, TorchObject, TorchResolver};
use super::{CheckpointError, DType, RawTensor};

/// Largest accepted `data.pkl`, decompressed (see the module docs).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Largest accepted ratio of `data.pkl`'s decompressed size to its
/// compressed size (see the module docs).
pub const MAX_PICKLE_RATIO: u64 = 16;
/// A `data.pkl` may always inflate to this size, whatever its ratio.
pub const PICKLE_RATIO_FLOOR: u64 = 1 << 20;
/// Largest total of storage bytes read from one archive.
pub const MAX_TOTAL_BYTES: u64 = 64 << 30;
/// How many times its compressed size a storage entry may inflate to (above
/// [`PICKLE_RATIO_FLOOR`]): the same reasoning as [`MAX_PICKLE_RATIO`], for the
/// tensor bytes a deflate bomb would otherwise expand to [`MAX_TOTAL_BYTES`].
pub const MAX_STORAGE_RATIO: u64 = 16;
/// Largest tensor whose byte size exceeds that of its storage.
pub const MAX_EXPANDED_BYTES: u64 = 256 << 20;

/// A parsed `.pth` archive: the unpickled object graph plus lazy storage access.
pub(crate) struct PthArchive<R: Read + Seek> {
    zip: ZipArchive<R>,
    /// Entry prefix, e.g. `"archive/"`.
    prefix: String,
    pub heap: TorchHeap,
    pub root: Value,
}

impl<R: Read + Seek> PthArchive<R> {
    pub(crate) fn open(mut reader: R) -> Result<Self, CheckpointError> {
        let archive_len = reader.seek(SeekFrom::End(0))?;
        reader.rewind()?;
        let mut zip = ZipArchive::new(reader)?;
        let pkl_name = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| (n.matches('/').count(), n.len()))
            .map(str::to_string)
            .ok_or_else(|| CheckpointError::MissingEntry("*/data.pkl".into()))?;
        let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

        if let Some(order) = read_small_entry(&mut zip, &format!("{prefix}byteorder"))? {
            let order = String::from_utf8_lossy(&order).trim().to_string();
            if order != "little" {
                return Err(CheckpointError::UnsupportedByteOrder(order));
            }
        }

        let pkl = {
            let entry = zip.by_name(&pkl_name)?;
            let compressed = entry.compressed_size().min(archive_len);
            let limit = pickle_limit(compressed);
            // Sized from the declared size (bounded by the limit), so that an
            // honest entry is read without growing the buffer.
            let mut buf = Vec::with_capacity(entry.size().min(limit) as usize + 1);
            entry.take(limit + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 > limit {
                return Err(too_large(
                    format!(
                        "{pkl_name} ({compressed} bytes compressed; it may inflate \
                         {MAX_PICKLE_RATIO}x, to {MAX_PICKLE_BYTES} bytes at most)"
                    ),
                    buf.len() as u64,
                    limit,
                ));
            }
            buf
        };
        let (heap, root) = pickle::unpickle(&pkl, &mut TorchResolver::default())?;
        drop(pkl);
        Ok(Self {
            zip,
            prefix,
            heap,
            root,
        })
    }

    /// The tensor `value` of entry `key` and its validated view: the view must fit in the storage
    /// its persistent id declares (the entry itself is checked when read).
    fn view_plan(
        &self,
        key: &str,
        value: &Value,
    ) -> Result<(Rc<TensorRef>, ViewPlan), CheckpointError> {
        let t = match self.heap.get(value) {
            Some(Object::Custom(TorchObject::Tensor(t))) => t.clone(),
            _ => {
                return Err(CheckpointError::NotATensor {
                    key: key.to_string(),
                    found: self.heap.describe(value),
                })
            }
        };
        let plan = ViewPlan::new(key, &t)?;
        let declared = t.storage.numel.saturating_mul(plan.itemsize);
        if declared < plan.extent_bytes {
            return Err(CheckpointError::StorageTooSmall {
                key: t.storage.key.to_string(),
                available: declared,
                needed: plan.extent_bytes,
            });
        }
        Ok((t, plan))
    }

    /// Materializes the given `(key, tensor value)` pairs, in order.
    pub(crate) fn materialize(
        &mut self,
        items: &[(String, Value)],
    ) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
        // Pass 1: validate every view and find how many bytes of each storage
        // are needed (and by how many tensors).
        let mut plans = Vec::with_capacity(items.len());
        // Storage keys are interned: identity is content, and hashing one
        // costs the same however long it is.
        let id = |key: &Rc<str>| Rc::as_ptr(key) as *const u8 as usize;
        let mut need: HashMap<usize, (u64, usize)> = HashMap::new();
        for (key, value) in items {
            let (t, plan) = self.view_plan(key, value)?;
            let e = need.entry(id(&t.storage.key)).or_insert((0, 0));
            e.0 = e.0.max(plan.extent_bytes);
            e.1 += 1;
            plans.push((key.clone(), t, plan));
        }

        // Pass 2: read storages (each once) and gather the views.
        let mut cache: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut read_total: u64 = 0;
        let mut out_total: u64 = 0;
        let mut out = Vec::with_capacity(plans.len());
        for (key, t, plan) in plans {
            let skey = &id(&t.storage.key);
            if !cache.contains_key(skey) {
                let (bytes_needed, _) = need[skey];
                read_total = read_total.saturating_add(bytes_needed);
                if read_total > MAX_TOTAL_BYTES {
                    return Err(too_large("storages".into(), read_total, MAX_TOTAL_BYTES));
                }
                let data = self.read_storage(&t.storage.key, bytes_needed)?;
                cache.insert(*skey, data);
            }
            out_total = out_total.saturating_add(plan.out_bytes);
            let out_limit = read_total
                .saturating_mul(4)
                .saturating_add(MAX_EXPANDED_BYTES);
            if out_total > out_limit {
                return Err(too_large("tensor data".into(), out_total, out_limit));
            }

            let users = &mut need.get_mut(skey).expect("planned").1;
            *users -= 1;
            let last_user = *users == 0;
            let data = if last_user && plan.is_whole(cache[skey].len()) {
                // Sole remaining user covering the whole storage: no copy.
                cache.remove(skey).expect("cached")
            } else {
                let d = plan.gather(&cache[skey]);
                if last_user {
                    cache.remove(skey);
                }
                d
            };
            out.push((
                key,
                RawTensor {
                    dtype: plan.dtype,
                    shape: plan.shape,
                    data,
                },
            ));
        }
        Ok(out)
    }

    /// Validates the given `(key, tensor value)` pairs as [`Self::materialize`] does, in the same
    /// order and with the same errors, but reads no storage bytes: each tensor is read later, on
    /// its own, by [`Self::load`]. Only the storage entries' declared sizes are checked here.
    pub(crate) fn plan_lazy(
        &mut self,
        items: &[(String, Value)],
    ) -> Result<Vec<(String, LazyTensor)>, CheckpointError> {
        let mut plans = Vec::with_capacity(items.len());
        let id = |key: &Rc<str>| Rc::as_ptr(key) as *const u8 as usize;
        let mut need: HashMap<usize, u64> = HashMap::new();
        for (key, value) in items {
            let (t, plan) = self.view_plan(key, value)?;
            let e = need.entry(id(&t.storage.key)).or_insert(0);
            *e = (*e).max(plan.extent_bytes);
            plans.push((key.clone(), t, plan));
        }
        // The totals `materialize` bounds, so that a file refused there is refused here.
        let mut seen: HashMap<usize, ()> = HashMap::new();
        let mut read_total: u64 = 0;
        let mut out_total: u64 = 0;
        let mut out = Vec::with_capacity(plans.len());
        for (key, t, plan) in plans {
            let skey = id(&t.storage.key);
            if seen.insert(skey, ()).is_none() {
                read_total = read_total.saturating_add(need[&skey]);
                if read_total > MAX_TOTAL_BYTES {
                    return Err(too_large("storages".into(), read_total, MAX_TOTAL_BYTES));
                }
                self.storage_entry(&t.storage.key, need[&skey])?;
            }
            out_total = out_total.saturating_add(plan.out_bytes);
            let out_limit = read_total
                .saturating_mul(4)
                .saturating_add(MAX_EXPANDED_BYTES);
            if out_total > out_limit {
                return Err(too_large("tensor data".into(), out_total, out_limit));
            }
            out.push((
                key,
                LazyTensor {
                    storage: t.storage.key.clone(),
                    plan,
                },
            ));
        }
        Ok(out)
    }

    /// Reads one tensor planned by [`Self::plan_lazy`]: its storage's bytes up to the view's
    /// extent, then the view (no copy when the view is the whole storage).
    pub(crate) fn load(&mut self, t: &LazyTensor) -> Result<RawTensor, CheckpointError> {
        let plan = &t.plan;
        let src = self.read_storage(&t.storage, plan.extent_bytes)?;
        let data = if plan.is_whole(src.len()) {
            src
        } else {
            plan.gather(&src)
        };
        Ok(RawTensor {
            dtype: plan.dtype,
            shape: plan.shape.clone(),
            data,
        })
    }

    /// The entry of storage `key` if it holds at least `len` bytes within the inflation limit.
    fn storage_entry(
        &mut self,
        key: &str,
        len: u64,
    ) -> Result<zip::read::ZipFile<'_, R>, CheckpointError> {
        let name = format!("{}data/{}", self.prefix, key);
        let entry = match self.zip.by_name(&name) {
            Ok(e) => e,
            Err(ZipError::FileNotFound) => return Err(CheckpointError::MissingStorage(key.into())),
            Err(e) => return Err(e.into()),
        };
        let too_small = |available| CheckpointError::StorageTooSmall {
            key: key.into(),
            available,
            needed: len,
        };
        if entry.size() < len {
            return Err(too_small(entry.size()));
        }
        // A storage inflates at most MAX_STORAGE_RATIO times its compressed
        // bytes: torch.save stores them uncompressed (ratio 1) and float weights
        // barely deflate, so only a deflate bomb comes near it.
        let limit = storage_limit(entry.compressed_size());
        if len > limit {
            return Err(too_large(
                format!(
                    "{name} ({} bytes compressed; a storage may inflate {MAX_STORAGE_RATIO}x)",
                    entry.compressed_size()
                ),
                len,
                limit,
            ));
        }
        Ok(entry)
    }

    /// Reads the first `len` bytes of storage `key`.
    fn read_storage(&mut self, key: &str, len: u64) -> Result<Vec<u8>, CheckpointError> {
        let too_small = |available| CheckpointError::StorageTooSmall {
            key: key.into(),
            available,
            needed: len,
        };
        let entry = self.storage_entry(key, len)?;
        // Never trust a size for preallocation beyond what compressed data
        // can plausibly expand to (deflate's maximum ratio is ~1032).
        let plausible = entry.compressed_size().saturating_mul(1032).max(4096);
        let cap = usize::try_from(len.min(plausible)).unwrap_or(0);
        let mut buf = Vec::with_capacity(cap);
        entry.take(len).read_to_end(&mut buf)?;
        if (buf.len() as u64) < len {
            return Err(too_small(buf.len() as u64));
        }
        Ok(buf)
    }
}

/// The most bytes a storage entry of `compressed` bytes may inflate to.
pub(crate) fn storage_limit(compressed: u64) -> u64 {
    compressed
        .saturating_mul(MAX_STORAGE_RATIO)
        .max(PICKLE_RATIO_FLOOR)
}

/// The most bytes a `data.pkl` of `compressed` bytes may inflate to.
pub(crate) fn pickle_limit(compressed: u64) -> u64 {
    compressed
        .saturating_mul(MAX_PICKLE_RATIO)
        .clamp(PICKLE_RATIO_FLOOR, MAX_PICKLE_BYTES)
}

fn too_large(what: String, bytes: u64, limit: u64) -> CheckpointError {
    CheckpointError::TooLarge { what, bytes, limit }
}

/// Reads a whole entry of at most `limit` bytes.
fn read_capped(entry: impl Read, limit: u64, name: &str) -> Result<Vec<u8>, CheckpointError> {
    let mut buf = Vec::new();
    entry.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(name.into(), buf.len() as u64, limit));
    }
    Ok(buf)
}

fn read_small_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
) -> Result<Option<Vec<u8>>, CheckpointError> {
    match zip.by_name(name) {
        Ok(entry) => read_capped(entry, 64, name).map(Some),
        Err(ZipError::FileNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A tensor of a lazily read archive: its storage and validated view.
pub(crate) struct LazyTensor {
    storage: Rc<str>,
    plan: ViewPlan,
}

impl LazyTensor {
    pub(crate) fn dtype(&self) -> DType {
        self.plan.dtype
    }

    pub(crate) fn shape(&self) -> &[usize] {
        &self.plan.shape
    }
}

/// A validated strided view: everything needed to copy it out.
struct ViewPlan {
    dtype: DType,
    itemsize: u64,
    shape: Vec<usize>,
    /// In elements.
    offset: usize,
    stride: Vec<usize>,
    numel: usize,
    /// Bytes of the storage the view touches (from its start).
    extent_bytes: u64,
    out_bytes: u64,
}

impl ViewPlan {
    fn new(key: &str, t: &TensorRef) -> Result<Self, CheckpointError> {
        let invalid = |msg: &str| CheckpointError::InvalidTensor {
            key: key.into(),
            msg: msg.into(),
        };
        let dtype = t
            .storage
            .dtype
            .clone()
            .map_err(|name| CheckpointError::UnsupportedDType(name.to_string()))?;
        let itemsize = dtype.size() as u64;
        let numel = t
            .size
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid("element count overflows"))?;
        let extent_elems = if numel == 0 {
            0
        } else {
            t.size
                .iter()
                .zip(t.stride.iter())
                .try_fold(t.offset, |acc, (&d, &s)| {
                    acc.checked_add((d - 1).checked_mul(s)?)
                })
                .and_then(|last| last.checked_add(1))
                .ok_or_else(|| invalid("view extent overflows"))?
        };
        let extent_bytes = extent_elems
            .checked_mul(itemsize)
            .ok_or_else(|| invalid("view extent overflows"))?;
        let out_bytes = numel
            .checked_mul(itemsize)
            .ok_or_else(|| invalid("byte size overflows"))?;
        if out_bytes > extent_bytes.max(MAX_EXPANDED_BYTES) {
            return Err(too_large(
                format!("expanded tensor {key}"),
                out_bytes,
                MAX_EXPANDED_BYTES,
            ));
        }
        if extent_bytes > MAX_TOTAL_BYTES {
            return Err(too_large(
                format!("tensor {key}"),
                extent_bytes,
                MAX_TOTAL_BYTES,
            ));
        }
        // Every index computed by `gather` is below the extent (or the view
        // is empty and offset/strides are never used), so it fits in usize.
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| invalid("does not fit in memory"));
        to_usize(extent_bytes.max(out_bytes))?;
        let shape = t
            .size
            .iter()
            .map(|&d| to_usize(d))
            .collect::<Result<_, _>>()?;
        let (offset, stride) = if numel == 0 {
            (0, vec![0; t.size.len()])
        } else {
            (
                to_usize(t.offset)?,
                t.stride
                    .iter()
                    .map(|&s| to_usize(s))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(Self {
            dtype,
            itemsize,
            shape,
            offset,
            stride,
            numel: to_usize(numel)?,
            extent_bytes,
            out_bytes,
        })
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }

    /// Whether the view is exactly the whole storage buffer, in order.
    fn is_whole(&self, storage_len: usize) -> bool {
        self.offset == 0 && self.is_contiguous() && self.out_bytes == storage_len as u64
    }

    /// Copies the view out of `src` (which holds at least `extent_bytes`).
    fn gather(&self, src: &[u8]) -> Vec<u8> {
        let item = self.itemsize as usize;
        if self.numel == 0 {
            return Vec::new();
        }
        if self.is_contiguous() {
            let start = self.offset * item;
            return src[start..start + self.numel * item].to_vec();
        }
        let mut out = Vec::with_capacity(self.numel * item);
        let ndim = self.shape.len();
        // Innermost dimension handled as a run; odometer over the others.
        let (inner_len, inner_stride) = (self.shape[ndim - 1], self.stride[ndim - 1]);
        let outer = &self.shape[..ndim - 1];
        let mut idx = vec![0usize; outer.len()];
        loop {
            let base = self.offset
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(&i, &s)| i * s)
                    .sum::<usize>();
            if inner_stride == 1 {
                out.extend_from_slice(&src[base * item..(base + inner_len) * item]);
            } else {
                for j in 0..inner_len {
                    let p = (base + j * inner_stride) * item;
                    out.extend_from_slice(&src[p..p + item]);
                }
            }
            // Advance the odometer.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return out;
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::torch::StorageRef;
    use super::*;

    fn plan(size: &[u64], stride: &[u64], offset: u64) -> Result<ViewPlan, CheckpointError> {
        let t = TensorRef {
            storage: Rc::new(StorageRef {
                dtype: Ok(DType::U8),
                key: "0".into(),
                numel: 1000,
            }),
            offset,
            size: size.into(),
            stride: stride.into(),
        };
        ViewPlan::new("t", &t)
    }

    #[test]
    fn transposed_view() {
        let src: Vec<u8> = (0..6).collect(); // [[0,1,2],[3,4,5]]
        let p = plan(&[3, 2], &[1, 3], 0).unwrap();
        assert_eq!(p.extent_bytes, 6);
        assert_eq!(p.gather(&src), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn offset_and_zero_dims() {
        let src: Vec<u8> = (0..10).collect();
        assert_eq!(
            plan(&[2, 2], &[4, 1], 3).unwrap().gather(&src),
            vec![3, 4, 7, 8]
        );
        assert_eq!(plan(&[], &[], 7).unwrap().gather(&src), vec![7]);
        let empty = plan(&[0, 5], &[5, 1], 999_999).unwrap();
        assert_eq!(empty.extent_bytes, 0);
        assert!(empty.gather(&src).is_empty());
        // stride 0 (expanded)
        assert_eq!(plan(&[3], &[0], 2).unwrap().gather(&src), vec![2, 2, 2]);
    }

    #[test]
    fn overflow_and_expansion_are_rejected() {
        assert!(plan(&[u64::MAX, 2], &[1, 1], 0).is_err());
        assert!(plan(&[1 << 40], &[1 << 40], 0).is_err());
        assert!(plan(&[1 << 40], &[0], 0).is_err());
    }
}
