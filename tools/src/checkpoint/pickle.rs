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
//! # Resources: linear in the input
//!
//! Every read is bounds-checked and every stack/memo access is validated.
//! Memory and work are linear in the pickle's size, because no opcode copies
//! anything whose size the input does not pay for:
//!
//! * Memo `GET` and `DUP` push a [`Value`], which is a scalar or a heap
//!   index: the object is shared, as in Python, and `APPEND`/`SETITEM` on
//!   it are seen through every reference.
//! * The items of tuples, lists and sets, and dicts, are reference counted
//!   ([`Rc`]): `list(x)`, `tuple(x)`, `set(x)` and `frozenset(x)` share
//!   `x`'s items, and call arguments are borrowed, not copied. A shared
//!   container that is then modified is copied first (copy-on-write, which
//!   keeps Python's semantics: `list(x)` is a new list). Such copies, and the
//!   dict that `OrderedDict(pairs)` builds, are the only places that copy
//!   values; they are charged to a budget of [`COPY_BUDGET_PER_BYTE`]
//!   values per input byte (plus [`COPY_BUDGET_BASE`]), and a pickle that
//!   exceeds it is an error. Pickles written by Python never copy anything.
//! * Strings and bytes are interned: equal contents share one allocation, so
//!   a dict key is hashed and compared by identity, in constant time, however
//!   often a memoised long key is reused.
//! * Global names are reference counted; calling a global shares its name.
//!   Whether a global is forbidden is decided once, when it is created.
//! * Empty containers share one empty allocation until first modified.
//!
//! Measured (`tools/tests/pickle_bounds.rs`, which bounds every case at
//! 128 bytes per input byte): floods of one-byte opcodes peak at 37 (`N`,
//! `DUP`: a stack slot each) to 61 (`]` + `MEMOIZE`: a heap object, a stack
//! slot and a memo slot) bytes per input byte, counting buffer growth; the
//! copy budget can add 24 bytes (one value) per input byte. Python's own
//! unpickler is in the same range.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use super::CheckpointError;

/// Values the copying operations (copy-on-write of a shared container,
/// `dict(pairs)`) may copy, per input byte. Pickles written by Python copy
/// nothing; a Python 2 `OrderedDict(pairs)` copies fewer values than its
/// pairs took bytes.
pub(crate) const COPY_BUDGET_PER_BYTE: u64 = 1;
/// Values any pickle may copy regardless of its size.
pub(crate) const COPY_BUDGET_BASE: u64 = 1 << 16;

/// A value on the pickle stack. Cheap to clone: strings and bytes are
/// reference counted (and interned) and containers live on the [`Heap`].
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

/// The items of a tuple, list or set; shared between containers until one
/// of them is modified.
pub(crate) type Items = Rc<Vec<Value>>;

/// A global's `module.name`, shared by every object that names it.
#[derive(Debug)]
pub(crate) struct QualName {
    pub module: Rc<str>,
    pub name: Rc<str>,
    /// Whether calling it is refused ([`is_forbidden`]), decided once.
    forbidden: bool,
}

impl QualName {
    fn new(module: Rc<str>, name: Rc<str>) -> Self {
        let forbidden = is_forbidden(&module, &name);
        Self {
            module,
            name,
            forbidden,
        }
    }
}

/// A heap object created while unpickling; `C` is what the [`Resolver`]
/// builds.
#[derive(Debug)]
pub(crate) enum Object<C> {
    Tuple(Items),
    List(Items),
    Dict(Rc<Dict>),
    Set(Items),
    /// A `GLOBAL`/`STACK_GLOBAL` reference (a class or function), not called.
    Global(Rc<QualName>),
    /// The result of calling / instantiating something we do not model.
    Opaque(Rc<QualName>),
    /// An object built by the [`Resolver`].
    Custom(C),
}

/// At most this many characters of a name go into an error message.
const NAME_IN_MESSAGE: usize = 80;

/// `s`, cut to [`NAME_IN_MESSAGE`] characters: error messages stay one
/// short line, and describing a hostile object costs constant time.
pub(crate) fn short(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(NAME_IN_MESSAGE) {
        Some((i, _)) => format!("{}...", &s[..i]).into(),
        None => s.into(),
    }
}

impl<C: fmt::Display> Object<C> {
    /// Short human-readable description, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Object::Tuple(_) => "tuple".into(),
            Object::List(_) => "list".into(),
            Object::Dict(_) => "dict".into(),
            Object::Set(_) => "set".into(),
            Object::Global(q) => format!("global {}.{}", short(&q.module), short(&q.name)),
            Object::Opaque(q) => {
                format!("opaque object of {}.{}", short(&q.module), short(&q.name))
            }
            Object::Custom(c) => c.to_string(),
        }
    }
}

/// Hashable view of a dict key, used to implement "assignment replaces".
/// Strings and bytes are interned, so their identity is their content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HashKey {
    None,
    Int(i64),
    Str(usize),
    Bytes(usize),
    Ref(usize),
}

impl HashKey {
    fn of(v: &Value) -> Option<HashKey> {
        Some(match v {
            Value::None => HashKey::None,
            Value::Bool(b) => HashKey::Int(i64::from(*b)),
            Value::Int(i) => HashKey::Int(*i),
            Value::Str(s) => HashKey::Str(Rc::as_ptr(s) as *const u8 as usize),
            Value::Bytes(b) => HashKey::Bytes(Rc::as_ptr(b) as *const u8 as usize),
            Value::Ref(r) => HashKey::Ref(*r),
            Value::BigInt | Value::Float(_) => return None,
        })
    }
}

/// An insertion-ordered dictionary.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<HashKey, usize>,
}

impl Dict {
    /// Sets `key` to `value` (keys must come from the same [`Heap`], whose
    /// strings are interned).
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

    /// Looks up a string key (a scan: keys are hashed by identity).
    pub(crate) fn get_str(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Str(s) if &**s == key => Some(v),
            _ => None,
        })
    }

    pub(crate) fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Arena of the objects created while unpickling, with the string interner
/// and the copy budget.
#[derive(Debug)]
pub(crate) struct Heap<C> {
    objects: Vec<Object<C>>,
    strings: HashSet<Rc<str>, RandomState>,
    bytes: HashSet<Rc<[u8]>, RandomState>,
    /// Shared by every empty tuple/list/set until it is modified.
    empty_items: Items,
    /// Shared by every empty dict until it is modified.
    empty_dict: Rc<Dict>,
    /// Values that may still be copied.
    copy_budget: u64,
    /// The budget at the start, for the error message.
    copy_limit: u64,
}

impl<C: fmt::Display> Heap<C> {
    /// A heap for unpickling `input_len` bytes (which sets the copy budget).
    fn new(input_len: usize) -> Self {
        let limit = (input_len as u64)
            .saturating_mul(COPY_BUDGET_PER_BYTE)
            .saturating_add(COPY_BUDGET_BASE);
        Self {
            objects: Vec::new(),
            strings: HashSet::default(),
            bytes: HashSet::default(),
            empty_items: Rc::new(Vec::new()),
            empty_dict: Rc::new(Dict::default()),
            copy_budget: limit,
            copy_limit: limit,
        }
    }

    pub(crate) fn alloc(&mut self, obj: Object<C>) -> Value {
        self.objects.push(obj);
        Value::Ref(self.objects.len() - 1)
    }

    /// A new opaque object of `module.name`.
    pub(crate) fn opaque(&mut self, module: Rc<str>, name: Rc<str>) -> Value {
        self.alloc(Object::Opaque(Rc::new(QualName::new(module, name))))
    }

    /// A new object holding no items (sharing the empty allocation).
    fn empty_seq(&self) -> Items {
        self.empty_items.clone()
    }

    /// The interned string with these contents.
    pub(crate) fn str(&mut self, s: &str) -> Rc<str> {
        if let Some(rc) = self.strings.get(s) {
            return rc.clone();
        }
        let rc: Rc<str> = Rc::from(s);
        self.strings.insert(rc.clone());
        rc
    }

    /// The interned bytes with these contents.
    fn bytes(&mut self, b: &[u8]) -> Rc<[u8]> {
        if let Some(rc) = self.bytes.get(b) {
            return rc.clone();
        }
        let rc: Rc<[u8]> = Rc::from(b);
        self.bytes.insert(rc.clone());
        rc
    }

    /// Charges `n` copied values to the copy budget.
    fn charge(&mut self, n: usize) -> Result<(), String> {
        match self.copy_budget.checked_sub(n as u64) {
            Some(left) => {
                self.copy_budget = left;
                Ok(())
            }
            None => Err(format!(
                "copies more than {} values (a shared container modified again \
                 and again); refusing input whose cost grows faster than its size",
                self.copy_limit
            )),
        }
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
        self.seq_rc(v).map(|items| items.as_slice())
    }

    /// The shared items of a tuple or list value.
    pub(crate) fn seq_rc(&self, v: &Value) -> Option<&Items> {
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
    // `module` is `root` or `root.*`; compared against the short names only,
    // so that the cost does not depend on the length of `module`.
    let in_root = |root: &str| {
        module == root
            || (module.starts_with(root) && module.as_bytes().get(root.len()) == Some(&b'.'))
    };
    MODULES.iter().any(|m| in_root(m)) || (in_root("builtins") && BUILTINS.contains(&name))
}

/// The error for calling a forbidden global.
fn forbidden(q: &QualName) -> CheckpointError {
    CheckpointError::ForbiddenGlobal {
        module: short(&q.module).into_owned(),
        name: short(&q.name).into_owned(),
    }
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
        memo: Vec::new(),
        sparse_memo: HashMap::new(),
        heap: Heap::new(data.len()),
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
    /// Memo entries `0..memo.len()`: Python assigns indices densely.
    memo: Vec<Value>,
    /// Memo entries at indices beyond the dense ones (never written by
    /// Python, but legal).
    sparse_memo: HashMap<u64, Value>,
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

    fn str_value(&mut self, bytes: &[u8]) -> Value {
        // Python may write lone surrogates ("surrogatepass"); keep them lossy.
        Value::Str(self.heap.str(&String::from_utf8_lossy(bytes)))
    }

    fn bytes_value(&mut self, bytes: &[u8]) -> Value {
        Value::Bytes(self.heap.bytes(bytes))
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
        let dense = self.memo.len() as u64;
        if idx < dense {
            self.memo[idx as usize] = v;
        } else if idx == dense {
            self.sparse_memo.remove(&idx);
            self.memo.push(v);
        } else {
            self.sparse_memo.insert(idx, v);
        }
        Ok(())
    }

    /// Number of memo entries (the index `MEMOIZE` assigns).
    fn memo_len(&self) -> u64 {
        (self.memo.len() + self.sparse_memo.len()) as u64
    }

    fn memo_get(&mut self, idx: u64) -> PResult<()> {
        let v = match usize::try_from(idx).ok().and_then(|i| self.memo.get(i)) {
            Some(v) => v,
            None => match self.sparse_memo.get(&idx) {
                Some(v) => v,
                None => return self.err(format!("memo index {idx} not defined")),
            },
        };
        self.stack.push(v.clone());
        Ok(())
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

    /// Charges `n` copied values to the heap's copy budget.
    fn charge(&mut self, n: usize) -> PResult<()> {
        match self.heap.charge(n) {
            Ok(()) => Ok(()),
            Err(msg) => self.err(msg),
        }
    }

    /// Appends items to the list/set on top of the stack (copying its items
    /// first if another container shares them).
    fn extend_top(&mut self, items: Vec<Value>) -> PResult<()> {
        let target = self.top()?.clone();
        let shared = match self.heap.get(&target) {
            Some(Object::List(l)) | Some(Object::Set(l)) => {
                (Rc::strong_count(l) > 1).then_some(l.len())
            }
            // Appending to an instance of an unknown list subclass: ignore.
            Some(Object::Opaque(_)) => return Ok(()),
            _ => return self.err("APPEND(S)/ADDITEMS target is not a list or set"),
        };
        if let Some(n) = shared {
            self.charge(n)?;
        }
        if let Some(Object::List(l)) | Some(Object::Set(l)) = self.heap.get_mut(&target) {
            Rc::make_mut(l).extend(items);
        }
        Ok(())
    }

    /// Sets key/value pairs on the dict on top of the stack.
    fn set_items_top(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of items");
        }
        let target = self.top()?.clone();
        let shared = match self.heap.get(&target) {
            Some(Object::Dict(d)) => (Rc::strong_count(d) > 1).then_some(d.len()),
            // Item assignment on an unknown mapping subclass: ignore.
            Some(Object::Opaque(_)) => return Ok(()),
            _ => return self.err("SETITEM(S) target is not a dict"),
        };
        // The shared empty dict costs nothing to copy; a dict shared
        // otherwise cannot arise (nothing copies dicts), but is charged.
        if let Some(n) = shared {
            self.charge(n)?;
        }
        if let Some(Object::Dict(d)) = self.heap.get_mut(&target) {
            let d = Rc::make_mut(d);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.insert(k, v);
            }
        }
        Ok(())
    }

    /// `dict(pairs)`: copies the pairs, so it is charged to the copy budget.
    fn dict_from_pairs(&mut self, pairs: Option<&Value>) -> PResult<Dict> {
        let Some(items) = pairs.and_then(|p| self.heap.seq_rc(p)).cloned() else {
            return Ok(Dict::default());
        };
        self.charge(items.len())?;
        let mut d = Dict::default();
        for item in items.iter() {
            if let Some([k, v]) = self.heap.seq(item) {
                d.insert(k.clone(), v.clone());
            }
        }
        Ok(d)
    }

    /// The items of the sequence `args[0]` (empty if there is none), as
    /// `set(it)`, `list(it)` and `tuple(it)` take them: shared, not copied.
    fn items_of(&self, args: &[Value]) -> Items {
        args.first()
            .and_then(|a| self.heap.seq_rc(a))
            .cloned()
            .unwrap_or_else(|| self.heap.empty_seq())
    }

    /// Calls (or instantiates) `callable(*args)` without executing anything.
    fn call(&mut self, callable: &Value, args: &[Value]) -> PResult<Value> {
        let qual = match self.heap.get(callable) {
            Some(Object::Global(q)) => q.clone(),
            // Calling the result of a call: another opaque object.
            Some(Object::Opaque(q)) => {
                let q = q.clone();
                return Ok(self.heap.alloc(Object::Opaque(q)));
            }
            _ => {
                let what = self.heap.describe(callable);
                return self.err(format!("cannot call a {what}"));
            }
        };
        if qual.forbidden {
            return Err(forbidden(&qual));
        }
        let call = Call {
            module: &qual.module,
            name: &qual.name,
            args,
        };
        match self.resolver.call(&mut self.heap, call) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(msg) => {
                let (module, name) = (short(&qual.module), short(&qual.name));
                return self.err(format!("{module}.{name}: {msg}"));
            }
        }
        let obj = match (&*qual.module, &*qual.name) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                Object::Dict(Rc::new(self.dict_from_pairs(args.first())?))
            }
            ("collections", "defaultdict") => Object::Dict(self.heap.empty_dict.clone()),
            ("builtins", "set") | ("builtins", "frozenset") => Object::Set(self.items_of(args)),
            ("builtins", "list") => Object::List(self.items_of(args)),
            ("builtins", "tuple") => Object::Tuple(self.items_of(args)),
            // copyreg._reconstructor(cls, base, state): name the real class.
            ("copyreg", "_reconstructor") => match args.first().and_then(|c| self.heap.get(c)) {
                Some(Object::Global(class)) => Object::Opaque(class.clone()),
                _ => Object::Opaque(qual),
            },
            _ => Object::Opaque(qual),
        };
        Ok(self.heap.alloc(obj))
    }

    /// `cls.__new__(cls, *args)`.
    fn new_obj(&mut self, cls: &Value, args: &[Value]) -> PResult<Value> {
        match self.heap.get(cls) {
            Some(Object::Global(q)) => {
                let obj = match (&*q.module, &*q.name) {
                    ("collections", "OrderedDict")
                    | ("builtins", "dict")
                    | ("collections", "defaultdict") => Object::Dict(self.heap.empty_dict.clone()),
                    ("builtins", "set") | ("builtins", "frozenset") => {
                        Object::Set(self.heap.empty_seq())
                    }
                    ("builtins", "list") => Object::List(self.heap.empty_seq()),
                    // Never "call" via NEWOBJ either, but reject the
                    // obviously malicious classes the same way.
                    _ if q.forbidden => return Err(forbidden(q)),
                    _ => Object::Opaque(q.clone()),
                };
                Ok(self.heap.alloc(obj))
            }
            Some(Object::Opaque(_)) => self.call(cls, args),
            _ => {
                let what = self.heap.describe(cls);
                self.err(format!("NEWOBJ on a {what}"))
            }
        }
    }

    /// The items of a call's argument tuple, shared (not copied).
    fn tuple_args(&self, args: &Value) -> PResult<Items> {
        match self.heap.get(args) {
            Some(Object::Tuple(items)) => Ok(items.clone()),
            _ => self.err(format!(
                "call arguments must be a tuple, got {}",
                self.heap.describe(args)
            )),
        }
    }

    fn push_global(&mut self, module: Rc<str>, name: Rc<str>) {
        let module = match &*module {
            "__builtin__" => self.heap.str("builtins"),
            "copy_reg" => self.heap.str("copyreg"),
            _ => module,
        };
        self.alloc(Object::Global(Rc::new(QualName::new(module, name))));
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
                    let v = self.str_value(s);
                    self.stack.push(v);
                }
                // SHORT_BINUNICODE
                0x8c => {
                    let n = self.u8()?;
                    let s = self.take(n.into())?;
                    let v = self.str_value(s);
                    self.stack.push(v);
                }
                // BINUNICODE8
                0x8d => {
                    let n = self.u64()?;
                    let s = self.take_u64_len(n)?;
                    let v = self.str_value(s);
                    self.stack.push(v);
                }
                // SHORT_BINSTRING (py2 str, decoded as text, as `encoding="utf-8"` does)
                b'U' => {
                    let n = self.u8()?;
                    let s = self.take(n.into())?;
                    let v = self.str_value(s);
                    self.stack.push(v);
                }
                // BINSTRING
                b'T' => {
                    let n = self.i32()?;
                    let Ok(n) = usize::try_from(n) else {
                        return self.err("BINSTRING with negative length");
                    };
                    let s = self.take(n)?;
                    let v = self.str_value(s);
                    self.stack.push(v);
                }
                // STRING (text, repr-quoted)
                b'S' => {
                    let line = self.line()?;
                    match unquote_py_string(line) {
                        Some(bytes) => {
                            let v = self.str_value(&bytes);
                            self.stack.push(v);
                        }
                        None => return self.err(format!("bad STRING {line:?}")),
                    }
                }
                // UNICODE (text, raw-unicode-escape)
                b'V' => {
                    let line = self.line()?;
                    match raw_unicode_unescape(line) {
                        Some(s) => {
                            let v = Value::Str(self.heap.str(&s));
                            self.stack.push(v);
                        }
                        None => return self.err("bad UNICODE escape"),
                    }
                }
                // SHORT_BINBYTES
                b'C' => {
                    let n = self.u8()?;
                    let b = self.take(n.into())?;
                    let v = self.bytes_value(b);
                    self.stack.push(v);
                }
                // BINBYTES
                b'B' => {
                    let n = self.u32()?;
                    let b = self.take_u64_len(n.into())?;
                    let v = self.bytes_value(b);
                    self.stack.push(v);
                }
                // BINBYTES8, BYTEARRAY8
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let b = self.take_u64_len(n)?;
                    let v = self.bytes_value(b);
                    self.stack.push(v);
                }

                // ---- containers ----
                b')' => self.alloc(Object::Tuple(self.heap.empty_seq())),
                b']' => self.alloc(Object::List(self.heap.empty_seq())),
                b'}' => self.alloc(Object::Dict(self.heap.empty_dict.clone())),
                0x8f => self.alloc(Object::Set(self.heap.empty_seq())),
                // TUPLE
                b't' => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::Tuple(Rc::new(items)));
                }
                // TUPLE1..3
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.alloc(Object::Tuple(Rc::new(items)));
                }
                // LIST
                b'l' => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::List(Rc::new(items)));
                }
                // FROZENSET
                0x91 => {
                    let items = self.pop_mark()?;
                    self.alloc(Object::Set(Rc::new(items)));
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
                    self.alloc(Object::Dict(Rc::new(d)));
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
                    let i = self.memo_len();
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
                    let (module, name) = (self.heap.str(module), self.heap.str(name));
                    self.push_global(module, name);
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    self.push_global(module, name);
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
                    let (module, name) = (self.heap.str(module), self.heap.str(name));
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
                    let pid = Value::Str(self.heap.str(line));
                    self.persistent_load(pid)?;
                }
                // EXT1, EXT2, EXT4: the copyreg extension registry.
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => u32::from(self.u8()?),
                        0x83 => u32::from(self.u16()?),
                        _ => self.u32()?,
                    };
                    let module = self.heap.str("copyreg.extension");
                    let name = self.heap.str(&code.to_string());
                    self.alloc(Object::Opaque(Rc::new(QualName::new(module, name))));
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
        assert!(matches!(a, Object::Opaque(q) if &*q.module == "__main__" && &*q.name == "Args"));
        let b = heap.get(d.get_str("b").unwrap()).unwrap();
        assert!(matches!(b, Object::Opaque(q) if &*q.name == "scalar"));
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
    fn copies_are_copies_and_references_alias() {
        // x = [1]; y = list(x); x.append(2); z = x (memo GET); z.append(3);
        // return (x, y)
        let p = b"\x80\x02]q\x00K\x01acbuiltins\nlist\nh\x00\x85Rq\x01\
                  0h\x00K\x02a0h\x00K\x03a0h\x00h\x01\x86.";
        let (heap, root) = load(p).unwrap();
        let [x, y] = heap.seq(&root).unwrap() else {
            panic!("not a pair")
        };
        let ints = |v: &Value| -> Vec<i64> {
            heap.seq(v)
                .unwrap()
                .iter()
                .map(|i| match i {
                    Value::Int(i) => *i,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(ints(x), [1, 2, 3]);
        assert_eq!(ints(y), [1]);
    }

    #[test]
    fn equal_strings_are_one_key() {
        // {'ab': 1, 'ab': 2} from two separate string opcodes.
        let p = b"}(X\x02\x00\x00\x00abK\x01\x8c\x02abK\x02u.";
        let (heap, root) = load(p).unwrap();
        let d = heap.dict(&root).unwrap();
        assert_eq!(d.len(), 1);
        assert!(matches!(d.get_str("ab"), Some(Value::Int(2))));
    }

    #[test]
    fn sparse_and_dense_memo() {
        // 7: PUT 5 (sparse); 8: MEMOIZE (index 1, as len(memo) is 1);
        // 9: PUT 0 (dense). (GET 5, GET 1, GET 0) is (7, 8, 9).
        let p = b"K\x07r\x05\x00\x00\x000K\x08\x940K\x09q\x000(j\x05\x00\x00\x00h\x01h\x00t.";
        let (heap, root) = load(p).unwrap();
        let items = heap.seq(&root).unwrap();
        assert!(matches!(
            items,
            [Value::Int(7), Value::Int(8), Value::Int(9)]
        ));
        assert!(load(b"K\x01q\x02h\x01.").is_err());
    }

    #[test]
    fn forbidden_modules_and_their_submodules() {
        assert!(is_forbidden("os", "system"));
        assert!(is_forbidden("os.path", "exists"));
        assert!(is_forbidden("builtins", "eval"));
        assert!(!is_forbidden("osx", "system"));
        assert!(!is_forbidden("torch.os", "system"));
        assert!(!is_forbidden("builtins", "list"));
        assert!(!is_forbidden(&"o".repeat(1000), "system"));
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
