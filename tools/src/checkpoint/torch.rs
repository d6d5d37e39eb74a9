//! What a `torch.save` pickle means, on top of the generic unpickler
//! (`pickle.rs`):
//!
//! * the [`TorchResolver`]: tensors in the pickle are
//!   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//!   calls whose storage is a persistent id
//!   `('storage', <storage class or dtype>, key, location, numel)`; they
//!   become [`TensorRef`]s (views, materialized by `pth.rs`);
//! * the selection of one state dict out of the unpickled object (flat,
//!   wrapped in `state_dict`/`model`, or a nested official VAR training
//!   checkpoint), and the stripping of the `torch.compile` (`_orig_mod.`)
//!   and DDP (`module.`) key prefixes.
//!
//! Nothing here copies what the pickle shares: storages are cached per
//! persistent id object, sizes and strides per tuple object, tensors hold
//! reference-counted parts, and the state dict is chosen before its entries
//! are collected, each candidate dict being checked once however many
//! entries refer to it. The work is linear in the pickle's size.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use super::pickle::{short, Call, Heap, Hook, Object, Resolver, Value};
use super::{CheckpointError, DType, RawTensor, Role, StateDict};

/// A storage named by a persistent id.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    /// Element type, or the unsupported storage class name.
    pub dtype: Result<DType, Rc<str>>,
    /// Name of the zip entry under `<prefix>/data/` (interned by the
    /// unpickler: equal keys are the same allocation).
    pub key: Rc<str>,
    /// Declared number of elements.
    pub numel: u64,
}

/// A tensor view on a storage, as described by `_rebuild_tensor_v2`.
#[derive(Clone, Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    /// At most [`MAX_DIMS`] entries, as many as `stride`.
    pub size: Rc<[u64]>,
    pub stride: Rc<[u64]>,
}

/// Most dimensions a tensor may have. Models have at most 5; PyTorch's CUDA
/// kernels accept 25. Bounding it bounds the per-tensor work.
pub(crate) const MAX_DIMS: usize = 32;

/// The objects of a `torch.save` pickle that Python's builtins do not cover.
#[derive(Clone, Debug)]
pub(crate) enum TorchObject {
    /// A storage from a persistent id.
    Storage(Rc<StorageRef>),
    /// A tensor (view on a storage).
    Tensor(Rc<TensorRef>),
}

impl fmt::Display for TorchObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TorchObject::Storage(_) => "storage",
            TorchObject::Tensor(_) => "tensor",
        })
    }
}

/// The unpickled object graph of a `torch.save` pickle.
pub(crate) type TorchHeap = Heap<TorchObject>;

/// Maps a torch storage class (`FloatStorage`) or dtype (`float32`) name.
fn torch_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "DoubleStorage" | "float64" | "double" => DType::F64,
        "FloatStorage" | "float32" | "float" => DType::F32,
        "HalfStorage" | "float16" | "half" => DType::F16,
        "BFloat16Storage" | "bfloat16" => DType::BF16,
        "LongStorage" | "int64" | "long" => DType::I64,
        "IntStorage" | "int32" | "int" => DType::I32,
        "ShortStorage" | "int16" | "short" => DType::I16,
        "CharStorage" | "int8" => DType::I8,
        "ByteStorage" | "uint8" | "UntypedStorage" => DType::U8,
        "BoolStorage" | "bool" => DType::Bool,
        _ => return None,
    })
}

/// The [`Resolver`] for `torch.save` pickles. Its caches are keyed by heap
/// index: a memoised persistent id, class or size tuple used again and
/// again is converted once.
#[derive(Default)]
pub(crate) struct TorchResolver {
    /// Storage object per persistent id tuple.
    storages: HashMap<usize, Value>,
    /// Dtype (or unsupported class name) per storage class object.
    classes: HashMap<usize, Result<DType, Rc<str>>>,
    /// Converted size or stride per tuple object.
    int_tuples: HashMap<usize, Rc<[u64]>>,
}

fn non_negative(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("negative {what} {i}")),
        Value::Bool(b) => Ok(u64::from(*b)),
        _ => Err(format!("{what} is not an int")),
    }
}

/// The heap index of `v` if it is a tuple: tuples never change, so what is
/// derived from one can be cached by its index (lists can change).
fn tuple_index(heap: &TorchHeap, v: &Value) -> Option<usize> {
    match (v, heap.get(v)) {
        (Value::Ref(i), Some(Object::Tuple(_))) => Some(*i),
        _ => None,
    }
}

impl TorchResolver {
    /// A size or stride tuple, converted once per tuple object.
    fn int_tuple(&mut self, heap: &TorchHeap, v: &Value, what: &str) -> Result<Rc<[u64]>, String> {
        let cache_key = tuple_index(heap, v);
        if let Some(done) = cache_key.and_then(|i| self.int_tuples.get(&i)) {
            return Ok(done.clone());
        }
        let items = heap
            .seq(v)
            .ok_or_else(|| format!("{what} is not a tuple"))?;
        if items.len() > MAX_DIMS {
            return Err(format!(
                "{what} has {} dims, at most {MAX_DIMS} are supported",
                items.len()
            ));
        }
        let ints: Rc<[u64]> = items
            .iter()
            .map(|x| non_negative(x, what))
            .collect::<Result<_, _>>()?;
        if let Some(i) = cache_key {
            self.int_tuples.insert(i, ints.clone());
        }
        Ok(ints)
    }

    /// The storage of a persistent id `('storage', class, key, location,
    /// numel)`.
    fn storage(&mut self, heap: &mut TorchHeap, items: &[Value]) -> Hook<Value> {
        let [_, class, key, _location, numel, ..] = items else {
            return Err(format!("storage id has {} fields, expected 5", items.len()));
        };
        let dtype = match class {
            Value::Ref(i) => match self.classes.get(i) {
                Some(d) => d.clone(),
                None => {
                    let d = match heap.get(class) {
                        Some(Object::Global(q)) if q.module.starts_with("torch") => {
                            torch_dtype(&q.name).ok_or_else(|| {
                                Rc::from(format!("{}.{}", short(&q.module), short(&q.name)))
                            })
                        }
                        _ => Err(Rc::from(heap.describe(class))),
                    };
                    self.classes.insert(*i, d.clone());
                    d
                }
            },
            _ => Err(Rc::from(heap.describe(class))),
        };
        let key = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => heap.str(&i.to_string()),
            _ => return Err("storage key is not a string".into()),
        };
        let numel = non_negative(numel, "storage size")?;
        let storage = StorageRef { dtype, key, numel };
        Ok(heap.alloc(Object::Custom(TorchObject::Storage(Rc::new(storage)))))
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
    fn rebuild_tensor(&mut self, heap: &mut TorchHeap, args: &[Value]) -> Hook<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(format!("expected at least 4 arguments, got {}", args.len()));
        };
        let storage = match heap.get(storage) {
            Some(Object::Custom(TorchObject::Storage(s))) => s.clone(),
            _ => return Err(format!("storage argument is a {}", heap.describe(storage))),
        };
        let offset = non_negative(offset, "storage offset")?;
        let size = self.int_tuple(heap, size, "size")?;
        let stride = self.int_tuple(heap, stride, "stride")?;
        if size.len() != stride.len() {
            return Err(format!(
                "size has {} dims but stride has {}",
                size.len(),
                stride.len()
            ));
        }
        Ok(
            heap.alloc(Object::Custom(TorchObject::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                size,
                stride,
            })))),
        )
    }
}

impl Resolver for TorchResolver {
    type Custom = TorchObject;

    fn persistent_load(&mut self, heap: &mut TorchHeap, pid: &Value) -> Hook<Value> {
        let Some(items) = heap.seq_rc(pid).cloned() else {
            return Err("expected a tuple".into());
        };
        let pid_index = tuple_index(heap, pid);
        if let Some(done) = pid_index.and_then(|i| self.storages.get(&i)) {
            return Ok(done.clone());
        }
        let storage = match items.first() {
            Some(Value::Str(s)) if &**s == "storage" => self.storage(heap, &items)?,
            // Not a storage (e.g. torch.package modules): a call of a
            // `torch.persistent_id` that is not modelled.
            _ => {
                let callable = heap.str("torch");
                let name = heap.str("persistent_id");
                heap.opaque(callable, name)
            }
        };
        if let Some(i) = pid_index {
            self.storages.insert(i, storage.clone());
        }
        Ok(storage)
    }

    fn call(&mut self, heap: &mut TorchHeap, call: Call<'_>) -> Hook<Option<Value>> {
        let args = call.args;
        match (call.module, call.name) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                self.rebuild_tensor(heap, args).map(Some)
            }
            // Parameters wrap a tensor: (data, requires_grad, hooks[, state]).
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                args.first().cloned().map(Some).ok_or("missing data".into())
            }
            // Tensor subclasses: (func, type, func_args, state) -> func(*func_args).
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let (Some(func), Some(func_args)) = (args.first(), args.get(2)) else {
                    return Ok(None);
                };
                let is_rebuild = matches!(heap.get(func), Some(Object::Global(q))
                    if &*q.module == "torch._utils" && &*q.name == "_rebuild_tensor_v2");
                match heap.seq_rc(func_args).cloned() {
                    Some(inner) if is_rebuild => self.rebuild_tensor(heap, &inner).map(Some),
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
}

/// Entry names that hold `role`'s state dict in nested checkpoints.
fn entry_names(role: Role) -> &'static [&'static str] {
    match role {
        Role::Var => &["var_wo_ddp", "var"],
        Role::Vae => &["vae_local", "vae"],
        Role::Any => &[],
    }
}

/// Strips leading `_orig_mod.` / `module.` prefixes (repeatedly).
pub fn strip_key_prefixes(mut key: &str) -> &str {
    loop {
        if let Some(rest) = key
            .strip_prefix("_orig_mod.")
            .or_else(|| key.strip_prefix("module."))
        {
            key = rest;
        } else {
            return key;
        }
    }
}

/// The [`StateDict`] of `(key, tensor)` pairs read from any format, with the
/// key prefixes stripped; two keys that become equal are an error.
pub(crate) fn into_state_dict(
    items: Vec<(String, RawTensor)>,
) -> Result<StateDict, CheckpointError> {
    let mut sd = StateDict::new();
    for (key, t) in items {
        let key = strip_key_prefixes(&key).to_string();
        if sd.contains_key(&key) {
            return Err(CheckpointError::DuplicateKey(key));
        }
        sd.insert(key, t);
    }
    Ok(sd)
}

/// `(key, tensor value)` pairs of an unpickled state dict.
pub(crate) type Entries = Vec<(String, Value)>;

/// Whether `v` is a dict whose keys are all strings and values all tensors.
fn is_state_dict(heap: &TorchHeap, v: &Value) -> bool {
    heap.dict(v).is_some_and(|d| {
        d.entries().iter().all(|(k, v)| {
            matches!(
                (k, heap.get(v)),
                (Value::Str(_), Some(Object::Custom(TorchObject::Tensor(_))))
            )
        })
    })
}

/// The `(key, value)` pairs of a dict that [`is_state_dict`].
fn state_dict_entries(heap: &TorchHeap, v: &Value) -> Entries {
    heap.dict(v)
        .map(|d| {
            d.entries()
                .iter()
                .filter_map(|(k, v)| match k {
                    Value::Str(k) => Some((k.to_string(), v.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Picks the state dict for `role` out of the unpickled root object.
pub(crate) fn select(
    heap: &TorchHeap,
    root: &Value,
    role: Role,
) -> Result<Entries, CheckpointError> {
    let Some(top) = heap.dict(root) else {
        return Err(CheckpointError::NoStateDict(format!(
            "the file holds a {}, not a dict",
            heap.describe(root)
        )));
    };
    if is_state_dict(heap, root) {
        return Ok(state_dict_entries(heap, root));
    }

    // Candidates: non-empty state dicts at the top level and in 'trainer'.
    // Named by path: "model", "trainer.var_wo_ddp", ... Each dict is checked
    // once, however many entries refer to it.
    let mut checked: HashMap<usize, bool> = HashMap::new();
    let mut candidates: Vec<(String, Value)> = Vec::new();
    let trainer = top.get_str("trainer").and_then(|t| heap.dict(t));
    let scopes = [("", Some(top)), ("trainer.", trainer)];
    for (scope, dict) in scopes {
        for (k, v) in dict.map(|d| d.entries()).unwrap_or_default() {
            let (Value::Str(name), Value::Ref(index)) = (k, v) else {
                continue;
            };
            let good = *checked.entry(*index).or_insert_with(|| {
                is_state_dict(heap, v) && heap.dict(v).is_some_and(|d| d.len() > 0)
            });
            if good {
                candidates.push((format!("{scope}{name}"), v.clone()));
            }
        }
    }
    let available: Vec<String> = candidates.iter().map(|c| c.0.clone()).collect();
    let take = |i: usize, c: Vec<(String, Value)>| Ok(state_dict_entries(heap, &c[i].1));

    // 1. The role's own entry (trainer.* preferred over top level).
    for name in entry_names(role) {
        for scope in ["trainer.", ""] {
            if let Some(i) = available
                .iter()
                .position(|a| *a == format!("{scope}{name}"))
            {
                return take(i, candidates);
            }
        }
    }
    // 2. A wrapper holding a single generic state dict.
    let generic: Vec<usize> = (0..candidates.len())
        .filter(|&i| matches!(&*candidates[i].0, "state_dict" | "model"))
        .collect();
    if generic.len() == 1 && (role == Role::Any || candidates.len() == 1) {
        return take(generic[0], candidates);
    }
    match role {
        _ if candidates.is_empty() => {
            let keys: Vec<String> = top
                .entries()
                .iter()
                .take(16)
                .map(|(k, v)| match k {
                    Value::Str(s) => format!("{s}: {}", heap.describe(v)),
                    other => format!("<{}>: {}", heap.describe(other), heap.describe(v)),
                })
                .collect();
            Err(CheckpointError::NoStateDict(format!(
                "top-level dict has entries {{{}}}",
                keys.join(", ")
            )))
        }
        Role::Any => Err(CheckpointError::NestedNeedsRole { available }),
        role => Err(CheckpointError::RoleNotFound { role, available }),
    }
}
