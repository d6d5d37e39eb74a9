//! Resource bounds of the `.pth` reader against hostile pickles (issue #13).
//!
//! A counting global allocator measures, for one `read_state_dict_bytes`
//! call, the peak of live heap bytes and the total of bytes allocated. Each
//! bound is a test: the peak must stay under a fixed multiple of the
//! pickle's size, and the total allocated (the work of copying) too, for
//! pickles built to make a naive unpickler quadratic. No test times
//! anything; linearity is also checked by comparing two sizes.
//!
//! The tests of this binary measure one at a time (they hold [`MEASURE`]),
//! so that their allocations do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use srdd_tools::checkpoint::{
    read_state_dict_bytes, CheckpointError, Role, StateDict, MAX_PICKLE_BYTES, MAX_PICKLE_RATIO,
    PICKLE_RATIO_FLOOR,
};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// `System`, counting live bytes, their peak, and all bytes ever allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
    TOTAL.fetch_add(n, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a fresh block of the new size: a copying realloc
            // holds both blocks for a moment.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Held by every test while it measures.
static MEASURE: Mutex<()> = Mutex::new(());

/// What one read cost.
#[derive(Debug)]
struct Cost {
    /// Peak live bytes above those live before the read.
    peak: usize,
    /// Bytes allocated during the read.
    total: usize,
}

/// Reads `file` as a checkpoint, measuring the read.
fn measure(file: &[u8]) -> (Result<StateDict, CheckpointError>, Cost) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let total_before = TOTAL.load(Ordering::Relaxed);
    let result = read_state_dict_bytes(file, Role::Any);
    let cost = Cost {
        peak: PEAK.load(Ordering::Relaxed).saturating_sub(before),
        total: TOTAL.load(Ordering::Relaxed) - total_before,
    };
    (result, cost)
}

/// A `.pth` archive holding `pickle` as `archive/data.pkl`.
fn pth(pickle: &[u8], method: CompressionMethod) -> Vec<u8> {
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(method);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    z.finish().unwrap().into_inner()
}

fn stored(pickle: &[u8]) -> Vec<u8> {
    pth(pickle, CompressionMethod::Stored)
}

/// Live bytes a read may peak at, per pickle byte. Floods of one-byte
/// opcodes (`]\x94]\x94...`: a heap object, a stack slot and a memo slot
/// per two bytes) need about 60, copies within the copy budget up to 24
/// more; the pickles below are built to need far more from an unpickler
/// that copies (thousands of bytes per byte at these sizes).
const PEAK_PER_BYTE: usize = 128;
/// Bytes a read may allocate in all, per pickle byte.
const TOTAL_PER_BYTE: usize = 256;
/// Fixed costs of a read (zip directory, hash tables' first allocations).
const SLACK: usize = 256 << 10;

fn assert_linear(what: &str, pickle_len: usize, cost: &Cost) {
    eprintln!(
        "{what}: pickle {pickle_len} B, peak {} B ({:.1}/B), allocated {} B ({:.1}/B)",
        cost.peak,
        cost.peak as f64 / pickle_len as f64,
        cost.total,
        cost.total as f64 / pickle_len as f64
    );
    assert!(
        cost.peak <= PEAK_PER_BYTE * pickle_len + SLACK,
        "{what}: peak {} B for a {pickle_len} B pickle",
        cost.peak
    );
    assert!(
        cost.total <= TOTAL_PER_BYTE * pickle_len + SLACK,
        "{what}: allocated {} B for a {pickle_len} B pickle",
        cost.total
    );
}

// ---- pickle builders -------------------------------------------------------

const PROTO2: &[u8] = b"\x80\x02";
/// The end of every pickle: an empty dict (an empty state dict), STOP.
const EMPTY_DICT_STOP: &[u8] = b"}.";

/// `MARK, 1, DUP x (n - 1)`: `n` items pushed for about one byte each.
fn pushed_items(n: usize) -> Vec<u8> {
    let mut p = b"(K\x01".to_vec();
    p.resize(p.len() + n - 1, b'2');
    p
}

/// `GLOBAL module.name`, memoised at `memo`.
fn global(module: &str, name: &str, memo: u8) -> Vec<u8> {
    let mut p = format!("c{module}\n{name}\n").into_bytes();
    p.extend_from_slice(&[b'q', memo]);
    p
}

/// memo 0 = a list of `len` items; memo 1 = `builtins.<func>`; then `calls`
/// times `POP(func(memo 0))`, each then modified with `APPEND` if `append`.
fn copies_of_a_list(func: &str, len: usize, calls: usize, append: bool) -> Vec<u8> {
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(b"]q\x00");
    p.extend(pushed_items(len));
    p.push(b'e'); // APPENDS
    p.push(b'0'); // POP
    p.extend(global("builtins", func, 1));
    for _ in 0..calls {
        p.extend_from_slice(b"h\x01h\x00\x85R"); // func((memo0,))
        if append {
            p.extend_from_slice(b"K\x07a"); // .append(7)
        }
        p.push(b'0');
    }
    p.extend_from_slice(EMPTY_DICT_STOP);
    p
}

// ---- the bounds --------------------------------------------------------------

/// `list(x)`, `tuple(x)`, `set(x)`, `frozenset(x)` of one memoised list, again
/// and again: the copies share `x`'s items.
#[test]
fn container_calls_share_their_argument() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    for func in ["list", "tuple", "set", "frozenset"] {
        let p = copies_of_a_list(func, 20_000, 6_000, false);
        let (r, cost) = measure(&stored(&p));
        assert!(r.unwrap().is_empty());
        assert_linear(func, p.len(), &cost);
    }
}

/// The peak grows like the pickle, not like its square: four times the
/// copies (and items) cost about four times, not sixteen.
#[test]
fn copies_scale_linearly() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let small = copies_of_a_list("list", 10_000, 3_000, false);
    let big = copies_of_a_list("list", 40_000, 12_000, false);
    let (r, small_cost) = measure(&stored(&small));
    r.unwrap();
    let (r, big_cost) = measure(&stored(&big));
    r.unwrap();
    let ratio = big_cost.peak as f64 / small_cost.peak as f64;
    eprintln!("peak {small_cost:?} -> {big_cost:?}: x{ratio:.2}");
    assert!(ratio < 6.0, "4x the input cost {ratio:.2}x the memory");
    let ratio = big_cost.total as f64 / small_cost.total as f64;
    assert!(ratio < 6.0, "4x the input allocated {ratio:.2}x the bytes");
}

/// `REDUCE` of one big memoised argument tuple, again and again: the
/// arguments are borrowed, not cloned (which the total allocated shows).
#[test]
fn call_arguments_are_not_copied() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = PROTO2.to_vec();
    p.extend(pushed_items(50_000));
    p.extend_from_slice(b"tq\x00"); // TUPLE, memo 0
    p.extend(global("__main__", "f", 1));
    for _ in 0..10_000 {
        p.extend_from_slice(b"h\x01h\x00R0"); // f(*memo0), POP
    }
    // Also as NEWOBJ and through a resolver-handled global.
    p.extend(global("torch._utils", "_rebuild_parameter", 2));
    for _ in 0..10_000 {
        p.extend_from_slice(b"h\x01h\x00\x810h\x02h\x00R0");
    }
    p.extend_from_slice(EMPTY_DICT_STOP);
    let (r, cost) = measure(&stored(&p));
    assert!(r.unwrap().is_empty());
    assert_linear("REDUCE/NEWOBJ of a big tuple", p.len(), &cost);
}

/// A shared list modified after each copy must be copied (Python's
/// semantics); those copies are charged to a budget linear in the input,
/// and the pickle that exceeds it is refused with a one-line error.
#[test]
fn copy_on_write_is_budgeted() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    // Within the budget: copied, and the copies are distinct from the
    // original (appending to one leaves the others alone, checked below).
    let p = copies_of_a_list("list", 100, 50, true);
    let (r, cost) = measure(&stored(&p));
    assert!(r.unwrap().is_empty());
    assert_linear("a few copies, modified", p.len(), &cost);
    // Quadratic: refused, cheaply.
    let p = copies_of_a_list("list", 20_000, 6_000, true);
    let (r, cost) = measure(&stored(&p));
    match r {
        Err(CheckpointError::Pickle { msg, .. }) => {
            assert!(msg.contains("copies more than"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        other => panic!("modified copies accepted: {other:?}"),
    }
    assert_linear("many copies, modified", p.len(), &cost);
    // OrderedDict(pairs) of one memoised list of pairs, again and again.
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(b"(K\x01K\x02\x86"); // (1, 2)
    p.extend(std::iter::repeat_n(b'2', 20_000)); // DUP
    p.extend_from_slice(b"lq\x00"); // LIST, memo 0
    p.extend(global("collections", "OrderedDict", 1));
    for _ in 0..6_000 {
        p.extend_from_slice(b"h\x01h\x00\x85R0");
    }
    p.extend_from_slice(EMPTY_DICT_STOP);
    let (r, cost) = measure(&stored(&p));
    assert!(
        matches!(&r, Err(CheckpointError::Pickle { msg, .. }) if msg.contains("copies more than")),
        "{r:?}"
    );
    assert_linear("OrderedDict(pairs) again and again", p.len(), &cost);
}

/// Aliasing as in Python: `DUP` and memo `GET` share one list, so appending
/// through any reference is seen through all, and nothing is copied.
#[test]
fn dup_and_get_share_and_mutate_in_place() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(b"]q\x00");
    p.extend(pushed_items(20_000));
    p.push(b'e');
    // 20,000 more appends, alternately through DUP and BINGET.
    for i in 0..20_000 {
        p.extend_from_slice(if i % 2 == 0 {
            b"2K\x03a0"
        } else {
            b"h\x00K\x03a0"
        });
    }
    // Stack: the list. Wrap it as {"model": list}: not a state dict.
    p.extend_from_slice(b"0}q\x01\x8c\x05modelh\x00s.");
    let (r, cost) = measure(&stored(&p));
    assert!(matches!(r, Err(CheckpointError::NoStateDict(_))), "{r:?}");
    assert_linear("DUP/GET then APPEND", p.len(), &cost);
}

/// Memoised long strings reused as dict keys, global names and storage
/// keys: interned, so neither hashed nor copied per use.
#[test]
fn long_memoised_strings_are_not_copied() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let long = "k".repeat(100_000);
    let mut p = PROTO2.to_vec();
    p.push(b'X');
    p.extend_from_slice(&(long.len() as u32).to_le_bytes());
    p.extend_from_slice(long.as_bytes());
    p.extend_from_slice(b"q\x00"); // memo 0: the long string
    p.extend_from_slice(b"}q\x01"); // memo 1: a dict
    for i in 0..20_000u32 {
        // d[long] = i, through a fresh reference each time.
        p.extend_from_slice(b"h\x00J");
        p.extend_from_slice(&i.to_le_bytes());
        p.push(b's');
        // STACK_GLOBAL(long, long) then call it: named, not copied.
        p.extend_from_slice(b"h\x00h\x00\x93)R0");
    }
    p.extend_from_slice(b"0}.");
    let (r, cost) = measure(&stored(&p));
    assert!(r.unwrap().is_empty());
    assert_linear("long memoised strings", p.len(), &cost);
}

/// Many top-level entries referring to one big state dict: each candidate
/// dict is checked once and only the chosen one's entries are collected.
#[test]
fn shared_state_dicts_are_checked_once() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = PROTO2.to_vec();
    // memo 0: a persistent id ('storage', torch.FloatStorage, '0', 'cpu', 4)
    p.extend_from_slice(b"(\x8c\x07storage");
    p.extend(global("torch", "FloatStorage", 9));
    p.extend_from_slice(b"\x8c\x010\x8c\x03cpuK\x04tq\x00");
    // memo 1: a tensor rebuilt from it.
    p.extend(global("torch._utils", "_rebuild_tensor_v2", 8));
    p.extend_from_slice(b"(h\x00QK\x00K\x04\x85K\x01\x85\x89}tRq\x01");
    // memo 2: a state dict of 5,000 distinct keys, all that tensor.
    p.extend_from_slice(b"}q\x02(");
    for i in 0..5_000u32 {
        let key = format!("{i:x}");
        p.push(0x8c);
        p.push(key.len() as u8);
        p.extend_from_slice(key.as_bytes());
        p.extend_from_slice(b"h\x01");
    }
    p.push(b'u');
    p.push(b'0');
    // The root: 5,000 entries, all that state dict.
    p.extend_from_slice(b"}(");
    for i in 0..5_000u32 {
        let key = format!("m{i:x}");
        p.push(0x8c);
        p.push(key.len() as u8);
        p.extend_from_slice(key.as_bytes());
        p.extend_from_slice(b"h\x02");
    }
    p.extend_from_slice(b"u.");
    let (r, cost) = measure(&stored(&p));
    match r {
        Err(CheckpointError::NestedNeedsRole { available }) => assert_eq!(available.len(), 5_000),
        other => panic!("{other:?}"),
    }
    assert_linear("one state dict under many names", p.len(), &cost);
}

/// Floods of one-byte opcodes: the constant behind "linear".
#[test]
fn opcode_floods_cost_a_bounded_amount_per_byte() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1 << 20;
    let floods: [(&str, &[u8]); 5] = [
        ("None", b"N"),
        ("empty list", b"]"),
        ("empty dict", b"}"),
        ("empty list + MEMOIZE", b"]\x94"),
        ("DUP", b"2"),
    ];
    for (what, unit) in floods {
        let mut p = PROTO2.to_vec();
        p.push(b'N');
        while p.len() < n {
            p.extend_from_slice(unit);
        }
        p.extend_from_slice(b"(t0"); // an empty MARK..TUPLE, dropped
        p.extend_from_slice(EMPTY_DICT_STOP);
        let (r, cost) = measure(&stored(&p));
        assert!(r.unwrap().is_empty(), "{what}");
        assert_linear(what, p.len(), &cost);
    }
}

// ---- data.pkl size caps --------------------------------------------------------

fn deflated(pickle: &[u8]) -> Vec<u8> {
    pth(pickle, CompressionMethod::Deflated)
}

fn none_flood(n: usize) -> Vec<u8> {
    let mut p = PROTO2.to_vec();
    p.resize(n - EMPTY_DICT_STOP.len(), b'N');
    p.extend_from_slice(EMPTY_DICT_STOP);
    p
}

/// A deflate bomb: `data.pkl` inflating more than [`MAX_PICKLE_RATIO`]
/// times is refused before it is unpickled, with a one-line error, and the
/// read holds at most the capped pickle.
#[test]
fn inflation_is_capped_relative_to_the_entry() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let p = none_flood(8 << 20);
    let file = deflated(&p);
    assert!((file.len() as u64) * MAX_PICKLE_RATIO < p.len() as u64);
    let (r, cost) = measure(&file);
    let e = r.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    match &e {
        CheckpointError::TooLarge { what, limit, .. } => {
            assert!(what.contains("archive/data.pkl"), "{what}");
            assert_eq!(*limit, PICKLE_RATIO_FLOOR);
        }
        other => panic!("{other:?}"),
    }
    assert!(!msg.contains('\n'), "{msg}");
    assert!(cost.peak < 4 * PICKLE_RATIO_FLOOR as usize, "{cost:?}");

    // Just within the floor: loads.
    let p = none_flood(PICKLE_RATIO_FLOOR as usize);
    let (r, _) = measure(&deflated(&p));
    assert!(r.unwrap().is_empty());

    // A pickle that compresses as real ones do (2-4x) loads.
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(b"}(");
    let mut i = 0u32;
    while p.len() < 3 << 20 {
        let key = format!("blocks.{i}.attn.proj.weight");
        p.push(0x8c);
        p.push(key.len() as u8);
        p.extend_from_slice(key.as_bytes());
        p.push(b'J');
        p.extend_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        i += 1;
    }
    p.extend_from_slice(b"u.");
    let file = deflated(&p);
    assert!((file.len() as u64) * MAX_PICKLE_RATIO > p.len() as u64);
    let (r, _) = measure(&file);
    assert!(matches!(r, Err(CheckpointError::NoStateDict(_))), "{r:?}");
}

/// A stored (not compressed) `data.pkl` over [`MAX_PICKLE_BYTES`] is refused.
#[test]
fn pickle_size_is_capped_absolutely() {
    let _m = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let p = none_flood(MAX_PICKLE_BYTES as usize + 1);
    let (r, cost) = measure(&stored(&p));
    match r {
        Err(CheckpointError::TooLarge { what, limit, .. }) => {
            assert!(what.contains("archive/data.pkl"), "{what}");
            assert_eq!(limit, MAX_PICKLE_BYTES);
        }
        other => panic!("{other:?}"),
    }
    assert!(cost.peak < 2 * MAX_PICKLE_BYTES as usize, "{cost:?}");
}
