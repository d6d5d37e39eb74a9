//! Inputs that cannot be used are refused before they cost anything (issue #13):
//! - a PNG whose header claims a size the command does not take fails on that header, before a
//!   pixel is inflated (a 2 MB file can claim 16384×16384 16-bit pixels: 1.6 GB decoded);
//! - a model file whose weights hold a NaN or an infinity (checksum resealed) fails on load
//!   instead of sampling garbage.

use srdd::zero_shot::read_mask;
use srdd::{read_png_rgb_sized, HostError};
use srdd_core::aligned::AlignedBytes;
use srdd_core::format::file_checksum;
use srdd_core::weights::Weight;
use srdd_core::Model;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes live now and the most live since the last reset:
/// proof that a refused PNG never had its pixel buffer allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters only
// observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated by `f` at its peak, over what was live before (other tests' threads add
/// their small allocations: the bound below leaves room for them).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

fn srdd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-limits-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A PNG whose header says `side × side` 16-bit RGB but whose one IDAT chunk holds only the
/// start of the first row (a stored deflate block of 256 zero bytes, the stream never ended):
/// anything that decodes its pixels fails on the truncated data, so the error a reader gives
/// tells whether it judged the header first. Returns the file's length.
fn huge_header_png(path: &Path, side: u32) -> usize {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Sixteen);
    let mut w = enc.write_header().unwrap();
    // zlib header, then a non-final stored block: LEN = 256, NLEN = !256.
    let mut idat = vec![0x78, 0x01, 0x00, 0x00, 0x01, 0xff, 0xfe];
    idat.extend([0u8; 256]);
    w.write_chunk(png::chunk::IDAT, &idat).unwrap();
    drop(w); // writes IEND
    std::fs::metadata(path).unwrap().len() as usize
}

fn write_png(path: &Path, side: u32) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let rgb = vec![0u8; (side * side * 3) as usize];
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
}

/// Runs `srdd ARGS -o OUT`; asserts exit 2, one stderr line containing `needle`, no output.
fn fails_with(args: &[&str], needle: &str) {
    let out = tmp(&format!(
        "fail-{}.png",
        args.join("_").replace('/', "_").len()
    ));
    let _ = std::fs::remove_file(&out);
    let o = srdd().args(args).arg("-o").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!out.exists(), "nothing written on error");
}

#[test]
fn a_png_of_the_wrong_size_is_refused_from_its_header() {
    let huge = tmp("huge-header.png");
    let len = huge_header_png(&huge, 16384);
    assert!(len < 1024, "the crafted file is tiny: {len} bytes");
    // Refused by the size check, with the header's numbers, and without a pixel buffer
    // (16384² × 3 bytes = 805 MB once stripped to 8 bits).
    let (r, peak) = peak_during(|| {
        read_png_rgb_sized(&huge, |w, h| {
            Err(HostError::ImageSize {
                what: "image",
                expected: 32,
                width: w,
                height: h,
            })
        })
    });
    match r {
        Err(HostError::ImageSize { width, height, .. }) => {
            assert_eq!((width, height), (16384, 16384))
        }
        Err(e) => panic!("expected the size error from the header, got: {e}"),
        Ok(_) => panic!("a truncated PNG decoded"),
    }
    assert!(
        peak < 16 << 20,
        "{peak} bytes allocated to refuse the header"
    );
    // The edit mask reader checks its header the same way.
    let (r, peak) = peak_during(|| read_mask(&huge, 32));
    assert!(
        matches!(
            r,
            Err(HostError::ImageSize {
                what: "mask",
                width: 16384,
                ..
            })
        ),
        "{:?}",
        r.err().map(|e| e.to_string())
    );
    assert!(peak < 16 << 20, "{peak} bytes allocated to refuse the mask");
    // A size the reader accepts goes on to decode: the same truncated data is then the error.
    let small = tmp("small-truncated.png");
    huge_header_png(&small, 32);
    let r = read_png_rgb_sized(&small, |w, h| {
        assert_eq!((w, h), (32, 32));
        Ok(())
    });
    assert!(matches!(r, Err(HostError::Png { .. })), "{:?}", r.err());
}

#[test]
fn zero_shot_commands_refuse_a_huge_png_from_its_header() {
    let huge = tmp("cli-huge.png");
    huge_header_png(&huge, 16384);
    let h = huge.to_str().unwrap();
    let good = tmp("cli-good.png");
    write_png(&good, 32);
    let g = good.to_str().unwrap();
    // The pixel data is truncated: a size error proves the header was judged first.
    fails_with(&["reconstruct", h], "image is 16384x16384, expected 32x32");
    fails_with(
        &["edit", h, "--box", "0,0,8,8"],
        "image is 16384x16384, expected 32x32",
    );
    fails_with(
        &["edit", g, "--mask", h],
        "mask is 16384x16384, expected 32x32",
    );
    fails_with(
        &["upscale", h],
        "low-resolution image is 16384x16384; upscale accepts 4x4, 8x8, 16x16",
    );
    // At an accepted size the same truncated data is reported as such.
    let small = tmp("cli-small-truncated.png");
    huge_header_png(&small, 32);
    fails_with(
        &["reconstruct", small.to_str().unwrap()],
        "not a readable PNG",
    );
}

fn builtin_model() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/default-int8.srdd"
    ))
    .unwrap()
}

/// Byte offsets in the built-in model of `pos_start[0]` (f32) and of the first scale of the
/// last block's int8 `ffn.fc2` weight.
fn f32_and_scale_offsets(bytes: &[u8]) -> (usize, usize) {
    let aligned = AlignedBytes::new(bytes);
    let base = aligned.as_bytes().as_ptr() as usize;
    let m = Model::from_bytes(aligned.as_bytes()).expect("the built-in model loads");
    let Weight::I8(fc2) = m.weights.var.blocks.last().expect("blocks").fc2.w else {
        panic!("the built-in model's last ffn.fc2 is int8")
    };
    (
        m.weights.var.pos_start.as_ptr() as usize - base,
        fc2.scales.as_ptr() as usize - base,
    )
}

#[test]
fn a_model_with_non_finite_weights_is_a_one_line_error() {
    let orig = builtin_model();
    let (f32_at, scale_at) = f32_and_scale_offsets(&orig);
    for (at, value) in [(f32_at, f32::NAN), (scale_at, f32::INFINITY)] {
        let mut bytes = orig.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        // Resealed: the checksum is right, only the values are wrong.
        let sum = file_checksum(&bytes);
        bytes[24..32].copy_from_slice(&sum.to_le_bytes());
        let path = tmp(&format!("non-finite-{at}.srdd"));
        std::fs::write(&path, &bytes).unwrap();
        fails_with(
            &["sample", "--model", path.to_str().unwrap(), "--class", "1"],
            "holds a non-finite value (NaN or infinity)",
        );
    }
}
