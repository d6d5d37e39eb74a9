//! # srdd (host)
//!
//! std conveniences around `srdd-core`: loading model files into aligned memory, sampling many
//! images on threads, PNG output and grids. The `srdd` binary is in `main.rs`.

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Plan, SampleOptions, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::{Model, Schedule};

/// The built-in default model (int8), embedded at compile time, 64-byte aligned.
pub static DEFAULT_MODEL: &Aligned<[u8]> =
    &Aligned(*include_bytes!("../../models/default-int8.srdd"));

/// Aligns `include_bytes!` data: `repr(C, align)` keeps the field at offset 0.
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

/// Model bytes from a file, or the embedded default.
pub enum ModelBytes {
    /// Read from disk.
    Owned(AlignedBytes),
    /// The embedded default.
    Default,
}

impl ModelBytes {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ModelBytes::Owned(b) => b.as_bytes(),
            ModelBytes::Default => &DEFAULT_MODEL.0,
        }
    }
}

/// An RGB8 image.
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB8.
    pub rgb: Vec<u8>,
}

pub use srdd_core::vae::to_rgb8;

/// Samples one image; `on_step` is called after each scale.
/// `par` runs the kernels (e.g. [`srdd_core::parallel::StdThreads`]); results do not depend on it.
pub fn sample_one(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    par: &dyn Parallel,
    on_step: &mut dyn FnMut(),
) -> srdd_core::Result<Image> {
    let plan = Plan::new(&model.config, &opts, sched)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::with_parallel(model, opts, sched.clone(), arena.as_bytes_mut(), par)?;
    struct Tick<'f>(&'f mut dyn FnMut());
    impl StepHook for Tick<'_> {
        fn scale_done(&mut self, _k: usize, _t: &[u32], _f: &[f32]) {
            (self.0)()
        }
    }
    let mut tick = Tick(on_step);
    gen.run(&mut tick)?;
    let side = model.config.image_side();
    let mut rgb = vec![0u8; side * side * 3];
    gen.decode(&mut |y, row| {
        for (o, v) in rgb[y * side * 3..(y + 1) * side * 3].iter_mut().zip(row) {
            *o = to_rgb8(*v);
        }
    })?;
    Ok(Image {
        width: side,
        height: side,
        rgb,
    })
}

/// Lays images out in a near-square grid with `gap` white pixels between them.
pub fn grid(images: &[Image], gap: usize) -> Image {
    let n = images.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let s = images.first().map_or(1, |i| i.width);
    let w = cols * s + (cols - 1) * gap;
    let h = rows * s + (rows - 1) * gap;
    let mut rgb = vec![255u8; w * h * 3];
    for (i, im) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        for y in 0..s {
            let dst = ((r * (s + gap) + y) * w + c * (s + gap)) * 3;
            rgb[dst..dst + s * 3].copy_from_slice(&im.rgb[y * s * 3..(y + 1) * s * 3]);
        }
    }
    Image {
        width: w,
        height: h,
        rgb,
    }
}

/// Encodes RGB8 as PNG bytes.
pub fn png_bytes(img: &Image) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&img.rgb)?;
    }
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file and a rename: never a half-written file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
