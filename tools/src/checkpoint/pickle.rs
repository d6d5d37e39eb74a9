//! A restricted pickle virtual machine.
//!
//! This is *not* a general Python unpickler: it never imports or calls
//! anything. It interprets the pickle opcodes into a small object graph
//! ([`Value`] plus a [`Heap`] of [`Object`]s) that the caller inspects
//! afterwards.
//!
//! * Containers (`tuple`, `list`, `dict`, `set`) are built natively;
//!   `collections.OrderedDict` (and `builtins.dict`, `collections.defaultdict`)
//!   become ordered [`Dict`]s.
//! * A [`Resolver`] supplied by the caller handles persistent ids
//!   (`BINPERSID`) and may give meaning to calls of specific globals; the
//!   objects it builds are its own [`Resolver::Custom`] type. This module
//!   knows no library's classes beyond Python's builtins.
//! * Any other global that is called (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`)
//!   yields an [`Object::Opaque`] placeholder, and `BUILD` state is ignored,
//!   so checkpoints that contain instances of training classes (argparse
//!   namespaces, optimizer state, numpy scalars...) still load.
//! * Calls of a few globals that only ever appear in malicious pickles
//!   (`os.system`, `builtins.eval`, `subprocess.*`, ...) are rejected with
//!   [`CheckpointError::ForbiddenGlobal`].
//!
//! Every read is bounds-checked, every stack/memo access is validated, and
//! the work done and memory used are linear in the input size (each opcode
//! allocates at most one heap object; memo lookups share, not copy, data).

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use super::CheckpointError;

/// A value on the pickle stack. Cheap to clone: strings and bytes are
/// reference counted and containers live on the [`Heap`].
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in an `i64` (kept opaque).
    BigInt,
    #[allow(dead_code)] // only read through `Debug` and in tests
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// Index of an [`Object`] in the [`Heap`].
    Ref(usize),
}

/// A heap object created while unpickling; `C` is what the [`Resolver`]
/// builds.
#[derive(Debug)]
pub(crate) enum Object<C> {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    /// A `GLOBAL`/`STACK_GLOBAL` reference (a class or function), not called.
    Global {
        module: String,
        name: String,
    },
    /// The result of calling / instantiating something we do not model.
    Opaque {
        module: String,
        name: String,
    },
    /// An object built by the [`Resolver`].
    Custom(C),
}

impl<C: fmt::Display> Object<C> {
    /// Short human-readable description, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Object::Tuple(_) => "tuple".into(),
            Object::List(_) => "list".into(),
            Object::Dict(_) => "dict".into(),
            Object::Set(_) => "set".into(),
            Object::Global { module, name } => format!("global {module}.{name}"),
            Object::Opaque { module, name } => format!("opaque object of {module}.{name}"),
            Object::Custom(c) => c.to_string(),
        }
    }
}

/// Hashable view of a dict key, used to implement "assignment replaces".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HashKey {
    None,
    Int(i64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Ref(usize),
}

impl HashKey {
    fn of(v: &Value) -> Option<HashKey> {
        Some(match v {
            Value::None => HashKey::None,
            Value::Bool(b) => HashKey::Int(i64::from(*b)),
            Value::Int(i) => HashKey::Int(*i),
            Value::Str(s) => HashKey::Str(s.clone()),
            Value::Bytes(b) => HashKey::Bytes(b.clone()),
            Value::Ref(r) => HashKey::Ref(*r),
            Value::BigInt | Value::Float(_) => return None,
        })
    }
}

/// An insertion-ordered dictionary.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<HashKey, usize>,
}

impl Dict {
    pub(crate) fn insert(&mut self, key: Value, value: Value) {
        match HashKey::of(&key) {
            Some(h) => match self.index.get(&h) {
                Some(&i) => self.entries[i].1 = value,
                None => {
                    self.index.insert(h, self.entries.len());
                    self.entries.push((key, value));
                }
            },
            None => self.entries.push((key, value)),
        }
    }

    /// Looks up a string key.
    pub(crate) fn get_str(&self, key: &str) -> Option<&Value> {
        let i = *self.index.get(&HashKey::Str(Rc::from(key)))?;
        Some(&self.entries[i].1)
    }

    pub(crate) fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Arena of the objects created while unpickling.
#[derive(Debug)]
pub(crate) struct Heap<C> {
    objects: Vec<Object<C>>,
}

impl<C: fmt::Display> Heap<C> {
    fn new() -> Self {
        Self {
            objects: Vec::new(),
        }
    }

    pub(crate) fn alloc(&mut self, obj: Object<C>) -> Value {
        self.objects.push(obj);
        Value::Ref(self.objects.len() - 1)
    }

    /// The object a value refers to (`None` for scalars).
    pub(crate) fn get(&self, v: &Value) -> Option<&Object<C>> {
        match v {
            Value::Ref(i) => self.objects.get(*i),
            _ => None,
        }
    }

    fn get_mut(&mut self, v: &Value) -> Option<&mut Object<C>> {
        match v {
            Value::Ref(i) => self.objects.get_mut(*i),
            _ => None,
        }
    }

    /// The items of a tuple or list value.
    pub(crate) fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.get(v)? {
            Object::Tuple(items) | Object::List(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn dict(&self, v: &Value) -> Option<&Dict> {
        match self.get(v)? {
            Object::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Short description of any value, for error messages.
    pub(crate) fn describe(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Ref(_) => self
                .get(v)
                .map_or_else(|| "dangling reference".into(), Object::describe),
        }
    }
}

/// A [`Resolver`]'s answer; an `Err` message becomes a
/// [`CheckpointError::Pickle`] at the opcode being executed.
pub(crate) type Hook<T> = Result<T, String>;

/// A call of the global `module.name(*args)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call<'a> {
    pub module: &'a str,
    pub name: &'a str,
    pub args: &'a [Value],
}

/// Hooks that give meaning to persistent ids and to calls of known globals.
pub(crate) trait Resolver {
    /// The objects this resolver builds; `Display` names them in errors.
    type Custom: fmt::Display;

    /// Resolves a persistent id (`BINPERSID` / `PERSID`).
    fn persistent_load(&mut self, heap: &mut Heap<Self::Custom>, pid: &Value) -> Hook<Value>;

    /// Handles a call. Returns `Ok(None)` to fall back to the generic
    /// handling (builtin containers or an opaque value). Forbidden globals
    /// are rejected before the resolver is asked.
    fn call(&mut self, heap: &mut Heap<Self::Custom>, call: Call<'_>) -> Hook<Option<Value>>;
}

/// Callables that only a malicious pickle would call.
fn is_forbidden(module: &str, name: &str) -> bool {
    const MODULES: &[&str] = &[
        "os",
        "posix",
        "nt",
        "posixpath",
        "ntpath",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "pickle",
        "_pickle",
        "marshal",
        "ctypes",
        "code",
        "codeop",
        "pty",
        "webbrowser",
        "multiprocessing",
        "asyncio",
        "pdb",
        "timeit",
        "platform",
    ];
    const BUILTINS: &[&str] = &[
        "eval",
        "exec",
        "execfile",
        "compile",
        "open",
        "__import__",
        "breakpoint",
        "input",
        "apply",
        "file",
        "globals",
        "locals",
        "vars",
        "setattr",
        "delattr",
    ];
    let root = module.split('.').next().unwrap_or(module);
    MODULES.contains(&root) || (root == "builtins" && BUILTINS.contains(&name))
}

/// Unpickles `data`, returning the heap and the root value.
pub(crate) fn unpickle<R: Resolver>(
    data: &[u8],
    resolver: &mut R,
) -> Result<(Heap<R::Custom>, Value), CheckpointError> {
    let mut vm = Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Heap::new(),
        resolver,
    };
    let root = vm.run()?;
    Ok((vm.heap, root))
}

struct Machine<'a, R: Resolver> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for error messages).
    op_pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    heap: Heap<R::Custom>,
    resolver: &'a mut R,
}

type PResult<T> = Result<T, CheckpointError>;

impl<'a, R: Resolver> Machine<'a, R> {
    fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(CheckpointError::Pickle {
            offset: self.op_pos,
            msg: msg.into(),
        })
    }

    // ---- input -----------------------------------------------------------

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let data = self.data;
        match self.pos.checked_add(n) {
            Some(end) if end <= data.len() => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.err(format!(
                "truncated: needs {n} bytes, {} left",
                data.len() - self.pos
            )),
        }
    }

    fn take_u64_len(&mut self, n: u64) -> PResult<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) => self.take(n),
            Err(_) => self.err(format!("length {n} too large")),
        }
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u16(&mut self) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> PResult<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `\n`-terminated line (without the newline), as UTF-8.
    fn line(&mut self) -> PResult<&'a str> {
        let data = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated line");
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("line is not UTF-8"),
        }
    }

    fn str_value(bytes: &[u8]) -> Value {
        // Python may write lone surrogates ("surrogatepass"); keep them lossy.
        Value::Str(Rc::from(String::from_utf8_lossy(bytes).as_ref()))
    }

    // ---- stack -----------------------------------------------------------

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> PResult<Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> PResult<&Value> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow");
        }
        Ok(self.stack.last().expect("checked above"))
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        match self.marks.pop() {
            // Invariant: every pop stays above the innermost mark.
            Some(m) => Ok(self.stack.split_off(m)),
            None => self.err("no MARK on the stack"),
        }
    }

    fn pop_str(&mut self) -> PResult<Rc<str>> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            _ => self.err("expected a string on the stack"),
        }
    }

    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> PResult<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                self.stack.push(v.clone());
                Ok(())
            }
            None => self.err(format!("memo index {idx} not defined")),
        }
    }

    /// The memo index operand of a PUT/GET opcode: one byte (BINPUT,
    /// BINGET), four (LONG_BINPUT, LONG_BINGET) or a text line (PUT, GET).
    fn memo_index(&mut self, op: u8) -> PResult<u64> {
        match op {
            b'q' | b'h' => Ok(self.u8()?.into()),
            b'r' | b'j' => Ok(self.u32()?.into()),
            _ => {
                let line = self.line()?;
                match line.trim().parse::<u64>() {
                    Ok(v) => Ok(v),
                    Err(_) => self.err(format!("bad memo index {line:?}")),
                }
            }
        }
    }

    // ---- containers ------------------------------------------------------

    fn alloc(&mut self, obj: Object<R::Custom>) {
        let v = self.heap.alloc(obj);
        self.stack.push(v);
    }

    /// Appends items to the list/set on top of the stack.
    fn extend_top(&mut self, items: Vec<Value>) -> PResult<()> {
        let target = self.top()?.clone();
        match self.heap.get_mut(&target) {
            Some(Object::List(l)) | Some(Object::Set(l)) => {
                l.extend(items);
                Ok(())
            }
            // Appending to an instance of an unknown list subclass: ignore.
            Some(Object::Opaque { .. }) => Ok(()),
            _ => self.err("APPEND(S)/ADDITEMS target is not a list or set"),
        }
    }

    /// Sets key/value pairs on the dict on top of the stack.
    fn set_items_top(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of items");
        }
        let target = self.top()?.clone();
        match self.heap.get_mut(&target) {
            Some(Object::Dict(d)) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
                Ok(())
            }
            // Item assignment on an unknown mapping subclass: ignore.
            Some(Object::Opaque { .. }) => Ok(()),
            _ => self.err("SETITEM(S) target is not a dict"),
        }
    }

    fn dict_from_pairs(&self, pairs: Option<&Value>) -> Dict {
        let mut d = Dict::default();
        if let Some(items) = pairs.and_then(|p| self.heap.seq(p)) {
            for item in items {
                if let Some([k, v]) = self.heap.seq(item) {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        d
    }

    /// The items of the sequence `args[0]` (empty if there is none), as
    /// `set(it)`, `list(it)` and `tuple(it)` take them.
    fn items_of(&self, args: &[Value]) -> Vec<Value> {
        args.first()
            .and_then(|a| self.heap.seq(a))
            .map(<[Value]>::to_vec)
            .unwrap_or_default()
    }

    /// Calls (or instantiates) `callable(*args)` without executing anything.
    fn call(&mut self, callable: &Value, args: &[Value]) -> PResult<Value> {
        let (module, name) = match self.heap.get(callable) {
            Some(Object::Global { module, name }) => (module.clone(), name.clone()),
            Some(Object::Opaque { module, name }) => {
                let obj = Object::Opaque {
                    module: module.clone(),
                    name: name.clone(),
                };
                return Ok(self.heap.alloc(obj));
            }
            _ => {
                let what = self.heap.describe(callable);
                return self.err(format!("cannot call a {what}"));
            }
        };
        if is_forbidden(&module, &name) {
            return Err(CheckpointError::ForbiddenGlobal { module, name });
        }
        let call = Call {
            module: &module,
            name: &name,
            args,
        };
        match self.resolver.call(&mut self.heap, call) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(msg) => return self.err(format!("{module}.{name}: {msg}")),
        }
        let obj = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                Object::Dict(self.dict_from_pairs(args.first()))
            }
            ("collections", "defaultdict") => Object::Dict(Dict::default()),
            ("builtins", "set") | ("builtins", "frozenset") => Object::Set(self.items_of(args)),
            ("builtins", "list") => Object::List(self.items_of(args)),
            ("builtins", "tuple") => Object::Tuple(self.items_of(args)),
            // copyreg._reconstructor(cls, base, state): name the real class.
            ("copyreg", "_reconstructor") => match args.first().and_then(|c| self.heap.get(c)) {
                Some(Object::Global { module, name }) => Object::Opaque {
                    module: module.clone(),
                    name: name.clone(),
                },
                _ => Object::Opaque { module, name },
            },
            _ => Object::Opaque { module, name },
        };
        Ok(self.heap.alloc(obj))
    }

    /// `cls.__new__(cls, *args)`.
    fn new_obj(&mut self, cls: &Value, args: &[Value]) -> PResult<Value> {
        match self.heap.get(cls) {
            Some(Object::Global { module, name }) => {
                let obj = match (module.as_str(), name.as_str()) {
                    ("collections", "OrderedDict")
                    | ("builtins", "dict")
                    | ("collections", "defaultdict") => Object::Dict(Dict::default()),
                    ("builtins", "set") | ("builtins", "frozenset") => Object::Set(Vec::new()),
                    ("builtins", "list") => Object::List(Vec::new()),
                    _ => {
                        // Never "call" via NEWOBJ either, but reject the
                        // obviously malicious classes the same way.
                        if is_forbidden(module, name) {
                            return Err(CheckpointError::ForbiddenGlobal {
                                module: module.clone(),
                                name: name.clone(),
                            });
                        }
                        Object::Opaque {
                            module: module.clone(),
                            name: name.clone(),
                        }
                    }
                };
                let _ = args;
                Ok(self.heap.alloc(obj))
            }
            Some(Object::Opaque { .. }) => self.call(cls, args),
            _ => {
                let what = self.heap.describe(cls);
                self.err(format!("NEWOBJ on a {what}"))
            }
        }
    }

    fn tuple_args(&self, args: &Value) -> PResult<Vec<Value>> {
        match self.heap.get(args) {
            Some(Object::Tuple(items)) => Ok(items.clone()),
            _ => self.err(format!(
                "call arguments must be a tuple, got {}",
                self.heap.describe(args)
            )),
        }
    }

    fn push_global(&mut self, module: &str, name: &str) {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        self.alloc(Object::Global {
            module: module.to_string(),
            name: name.to_string(),
        });
    }

    fn persistent_load(&mut self, pid: Value) -> PResult<()> {
        match self.resolver.persistent_load(&mut self.heap, &pid) {
            Ok(v) => {
                self.stack.push(v);
                Ok(())
            }
            Err(msg) => self.err(format!("persistent id: {msg}")),
        }
    }

    // ---- main loop -------------------------------------------------------

    fn run(&mut self) -> PResult<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return self.err(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: framing is only a read-ahead hint.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }

                // ---- scalars ----
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // BININT
                b'J' => {
                    let v = self.i32()?;
                    self.stack.push(Value::Int(v.into()));
                }
                // BININT1
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                // BININT2
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()));
                }
                // LONG1
                0x8a => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.stack.push(long_value(bytes));
                }
                // LONG4
                0x8b => {
                    let n = self.i32()?;
                    let Ok(n) = usize::try_from(n) else {
                        return self.err("LONG4 with negative length");
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(long_value(bytes));
                }
                // INT (text): also encodes booleans as I00/I01
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.trim().parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err(format!("bad INT {s:?}")),
                        },
                    };
                    self.stack.push(v);
                }
                // LONG (text)
                b'L' => {
                    let line = self.line()?;
                    let s = line.trim().trim_end_matches('L');
                    let v = match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_)
                            if !s.is_empty()
                                && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
                        {
                            Value::BigInt
                        }
                        Err(_) => return self.err(format!("bad LONG {line:?}")),
                    };
                    self.stack.push(v);
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.stack.push(Value::Float(v));
                }
                // FLOAT (text)
                b'F' => {
                    let line = self.line()?;
                    match line.trim().parse::<f64>() {
                        Ok(v) => self.stack.push(Value::Float(v)),
                        Err(_) => return self.err(format!("bad FLOAT {line:?}")),
                    }
                }

                // ---- strings and bytes ----
                // BINUNICODE
                b'X' => {
                    let n = self.u32()?;
                    let s = self.take_u64_len(n.into())?;
                    self.stack.push(Self::str_value(s));
                }
                // SHORT_BINUNICODE
                0x8c => {
                    let n = self.u8()?;
                    let s = self.take(n.into())?;
                    self.stack.push(Self::str_value(s));
                }
                // BINUNICODE8
                0x8d => {
                    let n = self.u64()?;
                    let s = self.take_u64_len(n)?;
                    self.stack.push(Self::str_value(s));
                }
                // SHORT_BINSTRING (py2 str, decoded as text, as `encoding="utf-8"` does)
                b'U' => {
                    let n = self.u8()?;
                    let s = self.take(n.into())?;
                    self.stack.push(Self::str_value(s));
                }
                // BINSTRING
                b'T' => {
                    let n = self.i32()?;
                    let Ok(n) = usize::try_from(n) else {
                        return self.err("BINSTRING with negative length");
                    };
                    let s = self.take(n)?;
                    self.stack.push(Self::str_value(s));
                }
                // STRING (text, repr-quoted)
                b'S' => {
                    let line = self.line()?;
                    match unquote_py_string(line) {
                        Some(bytes) => self.stack.push(Self::str_value(&bytes)),
                        None => return self.err(format!("bad STRING {line:?}")),
                    }
                }
                // UNICODE (text, raw-unicode-escape)
                b'V' => {
                    let line = self.line()?;
                    match raw_unicode_unescape(line) {
                        Some(s) => self.stack.push(Value::Str(Rc::from(s.as_str()))),
                        None => return self.err("bad UNICODE escape"),
                    }
                }
                // SHORT_BINBYTES
                b'C' => {
                    let n = self.u8()?;
                    let b = self.take(n.into())?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                // BINBYTES
                b'B' => {
                    let n = self.u32()?;
                    let b = self.take_u64_len(n.into())?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                // BINBYTES8, BYTEARRAY8
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let b = self.take_u64_len(n)?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }

                // ---- containers ----
                b')' => self.alloc(Object::Tuple(Vec::new())),
                b']' => self.alloc(Object::List(Vec::new())),
                b'}' => self.alloc(Object::Dict(Dict::default())),
                0x8f => self.alloc(Object::Set(Vec::new())),
                // TUPLE
                b't' => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::Tuple(items));
                }
                // TUPLE1..3
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.alloc(Object::Tuple(items));
                }
                // LIST
                b'l' => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::List(items));
                }
                // FROZENSET
                0x91 => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::Set(items));
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return self.err("DICT with an odd number of items");
                    }
                    let mut d = Dict::default();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                    self.alloc(Object::Dict(d));
                }
                // APPEND
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                // SETITEM
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items_top(vec![k, v])?;
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items_top(items)?;
                }

                // ---- memo ----
                // BINPUT, LONG_BINPUT, PUT
                b'q' | b'r' | b'p' => {
                    let i = self.memo_index(op)?;
                    self.memo_put(i)?;
                }
                // MEMOIZE
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                // BINGET, LONG_BINGET, GET
                b'h' | b'j' | b'g' => {
                    let i = self.memo_index(op)?;
                    self.memo_get(i)?;
                }

                // ---- globals, calls, objects ----
                // GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(module, name);
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    self.push_global(&module, &name);
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.tuple_args(&args)?;
                    let v = self.call(&callable, &args)?;
                    self.stack.push(v);
                }
                // NEWOBJ, and NEWOBJ_EX whose keyword arguments are dropped
                0x81 | 0x92 => {
                    if op == 0x92 {
                        let _kwargs = self.pop()?;
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_args(&args)?;
                    let v = self.new_obj(&cls, &args)?;
                    self.stack.push(v);
                }
                // INST
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let args = self.pop_mark()?;
                    self.push_global(module, name);
                    let cls = self.pop()?;
                    let v = self.call(&cls, &args)?;
                    self.stack.push(v);
                }
                // OBJ
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let v = self.call(&cls, &items)?;
                    self.stack.push(v);
                }
                // BUILD: `obj.__setstate__(state)`; the state is dropped.
                b'b' => {
                    let _state = self.pop()?;
                    self.top()?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent_load(pid)?;
                }
                // PERSID
                b'P' => {
                    let line = self.line()?;
                    self.persistent_load(Value::Str(Rc::from(line)))?;
                }
                // EXT1, EXT2, EXT4: the copyreg extension registry.
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => u32::from(self.u8()?),
                        0x83 => u32::from(self.u16()?),
                        _ => self.u32()?,
                    };
                    self.alloc(Object::Opaque {
                        module: "copyreg.extension".into(),
                        name: code.to_string(),
                    });
                }
                // NEXT_BUFFER, READONLY_BUFFER
                0x97 | 0x98 => return self.err("out-of-band buffers are not supported"),
                _ => return self.err(format!("unknown opcode 0x{op:02x}")),
            }
        }
    }
}

/// Decodes a two's-complement little-endian integer (LONG1/LONG4).
fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        // Accept over-long encodings of values that still fit in i64.
        let sign = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        if bytes[8..].iter().any(|&b| b != sign) || (bytes[7] & 0x80 != 0) != (sign == 0xff) {
            return Value::BigInt;
        }
        return long_value(&bytes[..8]);
    }
    let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

/// Parses a Python 2 `repr()` string literal as written by protocol 0.
fn unquote_py_string(line: &str) -> Option<Vec<u8>> {
    let b = line.as_bytes();
    if b.len() < 2 || b[0] != b[b.len() - 1] || !(b[0] == b'\'' || b[0] == b'"') {
        return None;
    }
    let inner = &b[1..b.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let c = *inner.get(i + 1)?;
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' | b'\'' | b'"' => out.push(c),
            b'x' => {
                let hex = std::str::from_utf8(inner.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => {
                out.push(b'\\');
                out.push(c);
            }
        }
    }
    Some(out)
}

/// Decodes Python's `raw-unicode-escape` (`\uXXXX` and `\UXXXXXXXX`).
fn raw_unicode_unescape(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (len, skip) = match after.as_bytes().first() {
            Some(b'u') => (4, 1),
            Some(b'U') => (8, 1),
            _ => {
                out.push('\\');
                rest = after;
                continue;
            }
        };
        let hex = after.get(skip..skip + len)?;
        let cp = u32::from_str_radix(hex, 16).ok()?;
        out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
        rest = &after[skip + len..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that knows nothing: plain Python only.
    struct Plain;
    impl Resolver for Plain {
        type Custom = std::convert::Infallible;
        fn persistent_load(&mut self, _: &mut Heap<Self::Custom>, _: &Value) -> Hook<Value> {
            Err("no persistent ids here".into())
        }
        fn call(&mut self, _: &mut Heap<Self::Custom>, _: Call<'_>) -> Hook<Option<Value>> {
            Ok(None)
        }
    }

    fn load(data: &[u8]) -> Result<(Heap<std::convert::Infallible>, Value), CheckpointError> {
        unpickle(data, &mut Plain)
    }

    #[test]
    fn ordered_dict_with_ints_and_strings() {
        // pickle.dumps(OrderedDict([('a', 1), ('b', -300), ('c', 2**40)]), protocol=2)
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01(");
        p.extend_from_slice(b"X\x01\x00\x00\x00aK\x01");
        p.extend_from_slice(b"X\x01\x00\x00\x00bJ\xd4\xfe\xff\xff");
        p.extend_from_slice(b"X\x01\x00\x00\x00c\x8a\x06\x00\x00\x00\x00\x00\x01");
        p.extend_from_slice(b"u.");
        let (heap, root) = load(&p).unwrap();
        let d = heap.dict(&root).unwrap();
        assert_eq!(d.len(), 3);
        assert!(matches!(d.get_str("a"), Some(Value::Int(1))));
        assert!(matches!(d.get_str("b"), Some(Value::Int(-300))));
        assert!(matches!(d.get_str("c"), Some(Value::Int(v)) if *v == 1 << 40));
    }

    #[test]
    fn long_decoding() {
        assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_value(&[0x00, 0x80]), Value::Int(-32768)));
        assert!(matches!(long_value(&[0xff, 0x00]), Value::Int(255)));
        assert!(matches!(
            long_value(&[1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Value::Int(1)
        ));
        assert!(matches!(
            long_value(&[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Value::BigInt
        ));
        assert!(matches!(
            long_value(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            Value::BigInt
        ));
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"h\x05.",                                // memo index not defined
            b"t.",                                    // TUPLE without MARK
            b"(0.",                                   // STOP with nothing above... (POP pops mark)
            b"(s.",                                   // SETITEM underflow above mark
            b"X\xff\xff\xff\xffabc.",                 // string longer than input
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", // BINUNICODE8 huge
            b"\x8b\xff\xff\xff\xff.",                 // LONG4 negative length
            b"K\x01K\x02a.",                          // APPEND to an int
            b"\xff",                                  // unknown opcode
            b"cos\nsystem\n(X\x02\x00\x00\x00lstR.",  // forbidden call
        ];
        for c in cases {
            assert!(load(c).is_err(), "accepted {c:?}");
        }
    }

    #[test]
    fn unknown_classes_become_opaque() {
        // NEWOBJ + BUILD of a custom class, then REDUCE on an unknown function.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00ac__main__\nArgs\nq\x01)\x81q\x02}q\x03X\x01\x00\x00\x00xK\x01sbX\x01\x00\x00\x00bcnumpy.core.multiarray\nscalar\nC\x01\x00\x85Ru.";
        let (heap, root) = load(p).unwrap();
        let d = heap.dict(&root).unwrap();
        let a = heap.get(d.get_str("a").unwrap()).unwrap();
        assert!(
            matches!(a, Object::Opaque { module, name } if module == "__main__" && name == "Args")
        );
        let b = heap.get(d.get_str("b").unwrap()).unwrap();
        assert!(matches!(b, Object::Opaque { name, .. } if name == "scalar"));
    }

    #[test]
    fn text_protocol_values() {
        let p = b"(I01\nI-7\nL12345678901234567890L\nF1.5\nS'a\\'b'\nVcaf\\u00e9\nl.";
        let (heap, root) = load(p).unwrap();
        let items = heap.seq(&root).unwrap();
        assert!(matches!(items[0], Value::Bool(true)));
        assert!(matches!(items[1], Value::Int(-7)));
        assert!(matches!(items[2], Value::BigInt));
        assert!(matches!(items[3], Value::Float(f) if f == 1.5));
        assert!(matches!(&items[4], Value::Str(s) if &**s == "a'b"));
        assert!(matches!(&items[5], Value::Str(s) if &**s == "café"));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in 0..400 {
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Bias towards real opcodes so that the interpreter gets deep.
                let b = (state >> 24) as u8;
                buf.push(if b & 1 == 0 {
                    b"(tKq.)}]hRXusea\x85\x86\x87\x93\x94"[usize::from(b >> 3) % 20]
                } else {
                    b
                });
            }
            let _ = load(&buf);
        }
    }
}
