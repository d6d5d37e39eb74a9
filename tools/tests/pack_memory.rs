//! `pack` streams: the heap it holds while converting a checkpoint pair is bounded by the
//! largest single tensor, not by the checkpoints' total. Measured with a counting global
//! allocator (this test binary only), on the fixtures in both input formats and every weight
//! format; the eager path (whole state dicts in memory) is measured too, to show that the bound
//! separates the two.

use srdd_core::WeightFormat;
use srdd_tools::checkpoint::{open_checkpoint, read_state_dict, Role, TensorStore};
use srdd_tools::convert::{catalog, infer_config, pack, pack_to_file, PackOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), SeqCst) + layout.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            if new_size >= layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), SeqCst) + new_size - layout.size();
                PEAK.fetch_max(now, SeqCst);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests in this binary run one at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak heap above the live heap at the start, while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(SeqCst);
    PEAK.store(base, SeqCst);
    let out = f();
    (out, PEAK.load(SeqCst) - base)
}

/// Fixed allowance on top of the tensors: the unpickled `.pth` object graph and zip directory
/// or safetensors header, the key index and catalog, the output's header and tensor table, the
/// writer's buffer and one conversion chunk. Far below one fixture checkpoint's data.
const SLACK: usize = 2 << 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Bytes of the largest tensor `pack` converts, as f32 (buffers it drops unread, such as the
/// L x L `attn_bias_for_masking`, do not count), and of all tensors of both files as stored.
fn sizes(var: &dyn TensorStore, vae: &dyn TensorStore, opts: &PackOptions) -> (usize, usize) {
    let cfg = infer_config(var, vae, opts).unwrap();
    let largest = catalog(&cfg, false)
        .unwrap()
        .iter()
        .map(|e| e.shape.iter().product::<usize>() * 4)
        .max()
        .unwrap();
    let mut total = 0;
    for s in [var, vae] {
        for k in s.tensor_names() {
            let (dtype, shape) = s.tensor_meta(k).unwrap();
            total += shape.iter().product::<usize>() * dtype.size();
        }
    }
    (largest, total)
}

fn options(dir: &str, weights: WeightFormat) -> PackOptions {
    PackOptions {
        weights,
        // The fixtures' schedules (their manifest.json `config.patch_nums`).
        patch_nums: match dir {
            "tiny-six-scales" => Some(vec![1, 2, 3, 4, 6, 8]),
            "emoji32" => Some(vec![1, 2, 3, 4, 5, 6, 8]),
            _ => None,
        },
        ..PackOptions::default()
    }
}

#[test]
fn streaming_pack_holds_one_tensor_at_a_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = std::env::temp_dir().join(format!("srdd-pack-memory-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let cases = [
        ("tiny-official-schedule", "safetensors"),
        ("tiny-official-schedule", "pth"),
        ("tiny-six-scales", "pth"),
        ("emoji32", "pth"),
    ];
    for (dir, ext) in cases {
        for weights in [WeightFormat::Int8, WeightFormat::F16, WeightFormat::F32] {
            let opts = options(dir, weights);
            let var_p = fixture(dir).join(format!("var.{ext}"));
            let vae_p = fixture(dir).join(format!("vae.{ext}"));
            let out = out_dir.join("out.srdd");
            let ((largest, total, len), peak) = peak_during(|| {
                let var = open_checkpoint(&var_p, Role::Var).unwrap();
                let vae = open_checkpoint(&vae_p, Role::Vae).unwrap();
                let (largest, total) = sizes(&var, &vae, &opts);
                let len = pack_to_file(&var, &vae, &opts, &out).unwrap();
                (largest, total, len)
            });
            // int8 holds the input tensor and its quantized copy (1.25x its f32 bytes) at once.
            let bound = largest + largest / 4 + SLACK;
            let what = format!("{dir} {ext} {weights:?}");
            eprintln!(
                "{what}: peak heap {peak} B; largest tensor (f32) {largest} B, all tensors \
                 {total} B, output {len} B; bound {bound} B"
            );
            // The bound must be able to fail: buffering either checkpoint whole exceeds it.
            assert!(
                bound < total / 2,
                "{what}: the fixture is too small to tell"
            );
            assert!(
                peak <= bound,
                "{what}: peak heap {peak} B > bound {bound} B"
            );

            // The in-memory path holds every tensor and the whole output: over the bound.
            let (_, eager) = peak_during(|| {
                let var = read_state_dict(&var_p, Role::Var).unwrap();
                let vae = read_state_dict(&vae_p, Role::Vae).unwrap();
                pack(&var, &vae, &opts).unwrap().len()
            });
            eprintln!("{what}: in-memory path peak heap {eager} B");
            assert!(
                eager > bound,
                "{what}: in-memory {eager} B <= bound {bound} B"
            );
        }
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}
