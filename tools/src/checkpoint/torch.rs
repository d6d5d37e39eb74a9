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

use std::fmt;

use super::pickle::{Call, Heap, Hook, Object, Resolver, Value};
use super::{CheckpointError, DType, RawTensor, Role, StateDict};

/// A storage named by a persistent id.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    /// Element type, or the unsupported storage class name.
    pub dtype: Result<DType, String>,
    /// Name of the zip entry under `<prefix>/data/`.
    pub key: String,
    /// Declared number of elements.
    pub numel: u64,
}

/// A tensor view on a storage, as described by `_rebuild_tensor_v2`.
#[derive(Clone, Debug)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The objects of a `torch.save` pickle that Python's builtins do not cover.
#[derive(Clone, Debug)]
pub(crate) enum TorchObject {
    /// A storage from a persistent id.
    Storage(StorageRef),
    /// A tensor (view on a storage).
    Tensor(TensorRef),
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

/// The [`Resolver`] for `torch.save` pickles.
pub(crate) struct TorchResolver;

fn non_negative(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("negative {what} {i}")),
        Value::Bool(b) => Ok(u64::from(*b)),
        _ => Err(format!("{what} is not an int")),
    }
}

fn int_tuple(heap: &TorchHeap, v: &Value, what: &str) -> Result<Vec<u64>, String> {
    let items = heap
        .seq(v)
        .ok_or_else(|| format!("{what} is not a tuple"))?;
    items.iter().map(|x| non_negative(x, what)).collect()
}

impl TorchResolver {
    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
    fn rebuild_tensor(heap: &mut TorchHeap, args: &[Value]) -> Hook<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(format!("expected at least 4 arguments, got {}", args.len()));
        };
        let storage = match heap.get(storage) {
            Some(Object::Custom(TorchObject::Storage(s))) => s.clone(),
            _ => return Err(format!("storage argument is a {}", heap.describe(storage))),
        };
        let offset = non_negative(offset, "storage offset")?;
        let size = int_tuple(heap, size, "size")?;
        let stride = int_tuple(heap, stride, "stride")?;
        if size.len() != stride.len() {
            return Err(format!(
                "size has {} dims but stride has {}",
                size.len(),
                stride.len()
            ));
        }
        Ok(heap.alloc(Object::Custom(TorchObject::Tensor(TensorRef {
            storage,
            offset,
            size,
            stride,
        }))))
    }
}

impl Resolver for TorchResolver {
    type Custom = TorchObject;

    fn persistent_load(&mut self, heap: &mut TorchHeap, pid: &Value) -> Hook<Value> {
        let items = heap.seq(pid).ok_or("expected a tuple")?;
        match items.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            _ => {
                // Not a storage (e.g. torch.package modules): opaque.
                return Ok(heap.alloc(Object::Opaque {
                    module: "torch".into(),
                    name: "persistent_id".into(),
                }));
            }
        }
        let [_, class, key, _location, numel, ..] = items else {
            return Err(format!("storage id has {} fields, expected 5", items.len()));
        };
        let dtype = match heap.get(class) {
            Some(Object::Global { module, name }) if module.starts_with("torch") => {
                torch_dtype(name).ok_or_else(|| format!("{module}.{name}"))
            }
            _ => Err(heap.describe(class)),
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return Err("storage key is not a string".into()),
        };
        let numel = non_negative(numel, "storage size")?;
        let storage = StorageRef { dtype, key, numel };
        Ok(heap.alloc(Object::Custom(TorchObject::Storage(storage))))
    }

    fn call(&mut self, heap: &mut TorchHeap, call: Call<'_>) -> Hook<Option<Value>> {
        let args = call.args;
        match (call.module, call.name) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                Self::rebuild_tensor(heap, args).map(Some)
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
                let is_rebuild = matches!(heap.get(func), Some(Object::Global { module, name })
                    if module == "torch._utils" && name == "_rebuild_tensor_v2");
                match heap.seq(func_args) {
                    Some(inner) if is_rebuild => {
                        let inner = inner.to_vec();
                        Self::rebuild_tensor(heap, &inner).map(Some)
                    }
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

/// If `v` is a dict whose keys are all strings and values all tensors,
/// returns its `(key, value)` pairs.
fn as_state_dict(heap: &TorchHeap, v: &Value) -> Option<Entries> {
    let d = heap.dict(v)?;
    d.entries()
        .iter()
        .map(|(k, v)| match (k, heap.get(v)) {
            (Value::Str(k), Some(Object::Custom(TorchObject::Tensor(_)))) => {
                Some((k.to_string(), v.clone()))
            }
            _ => None,
        })
        .collect()
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
    if let Some(sd) = as_state_dict(heap, root) {
        return Ok(sd);
    }

    // Candidates: non-empty state dicts at the top level and in 'trainer'.
    // Named by path: "model", "trainer.var_wo_ddp", ...
    let mut candidates: Vec<(String, Entries)> = Vec::new();
    let trainer = top.get_str("trainer").and_then(|t| heap.dict(t));
    let scopes = [("", Some(top)), ("trainer.", trainer)];
    for (scope, dict) in scopes {
        for (k, v) in dict.map(|d| d.entries()).unwrap_or_default() {
            let Value::Str(name) = k else { continue };
            if let Some(sd) = as_state_dict(heap, v).filter(|sd| !sd.is_empty()) {
                candidates.push((format!("{scope}{name}"), sd));
            }
        }
    }
    let available: Vec<String> = candidates.iter().map(|c| c.0.clone()).collect();
    let take = |i: usize, mut c: Vec<(String, Entries)>| Ok(c.swap_remove(i).1);

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
