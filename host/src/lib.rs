//! # srdd (host)
//!
//! std conveniences around `srdd-core`: loading model files into aligned memory, sampling many
//! images on threads, PNG output and grids. The `srdd` binary is in `main.rs`.

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Compute, Generator, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::resample::{ConfidenceThreshold, FixedFraction, KeepAll, Learned, ResamplePolicy};
use srdd_core::{Forward, Model, Schedule};

/// The built-in default model (int8), embedded at compile time, 64-byte aligned.
pub static DEFAULT_MODEL: &Aligned<[u8]> =
    &Aligned(*include_bytes!("../../models/default-int8.srdd"));

pub use srdd_core::aligned::Aligned;

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

pub mod args;
pub mod backend;
pub mod bench;
pub mod pool;
pub mod report;
pub mod zero_shot;

/// A resampling policy as the CLI names it (`keep`, `fraction:F`, `threshold:P`, `learned`);
/// each image gets its own instance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResampleChoice {
    /// `keep`.
    Keep,
    /// `fraction:F`.
    Fraction(f32),
    /// `threshold:P`.
    Threshold(f32),
    /// `learned` (the scorer stored in the model's `resample_policy`).
    Learned(Learned),
}

impl ResampleChoice {
    /// Parses the CLI form; `learned` reads the model's metadata.
    pub fn parse(s: &str, m: &Model<'_>) -> Result<Self, String> {
        let bad = || format!("--resample {s}: expected keep, fraction:F, threshold:P or learned");
        let num = |v: &str| -> Result<f32, String> {
            let x: f32 = v.parse().map_err(|_| bad())?;
            if (0.0..=1.0).contains(&x) {
                Ok(x)
            } else {
                Err(format!("--resample {s}: the value must be in [0, 1]"))
            }
        };
        match s.split_once(':') {
            None if s == "keep" => Ok(ResampleChoice::Keep),
            None if s == "learned" => {
                let text = m.meta("resample_policy").ok_or(
                    "--resample learned: this model stores no learned policy (resample_policy)",
                )?;
                let v: Vec<f32> = text
                    .split(',')
                    .map(|x| x.trim().parse::<f32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "the model's resample_policy is not 4 numbers")?;
                if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
                    return Err("the model's resample_policy is not 4 finite numbers".into());
                }
                Ok(ResampleChoice::Learned(Learned {
                    w: [v[0], v[1], v[2]],
                    bias: v[3],
                }))
            }
            Some(("fraction", v)) => Ok(ResampleChoice::Fraction(num(v)?)),
            Some(("threshold", v)) => Ok(ResampleChoice::Threshold(num(v)?)),
            _ => Err(bad()),
        }
    }

    /// A fresh policy object.
    pub fn instance(&self) -> Box<dyn ResamplePolicy> {
        match *self {
            ResampleChoice::Keep => Box::new(KeepAll),
            ResampleChoice::Fraction(fraction) => Box::new(FixedFraction { fraction }),
            ResampleChoice::Threshold(threshold) => Box::new(ConfidenceThreshold { threshold }),
            ResampleChoice::Learned(l) => Box::new(l),
        }
    }
}

/// Errors of the host conveniences: one line each, naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine refused (bad options, arena, tokens…).
    #[error("{0}")]
    Core(#[from] srdd_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        err: std::io::Error,
    },
    /// A PNG that does not decode.
    #[error("{path}: not a readable PNG image ({err})")]
    Png {
        /// The file.
        path: String,
        /// The decoder's message.
        err: String,
    },
    /// An image or mask of the wrong size.
    #[error("{what} is {width}x{height}, expected {expected}x{expected}")]
    ImageSize {
        /// Which input.
        what: &'static str,
        /// Expected side.
        expected: usize,
        /// Given width.
        width: usize,
        /// Given height.
        height: usize,
    },
    /// The model file has no encoder (pack it without `--no-encoder`).
    #[error("this model has no encoder; zero-shot tasks need one (pack without --no-encoder)")]
    NoEncoder,
    /// An option out of range.
    #[error("{0}")]
    Option(String),
}

/// Reads a PNG (gray, gray+alpha, RGB, RGBA or palette; 8 or 16 bit) as RGB8, compositing
/// transparency over white. Any size up to 16384×16384; a command that needs one size calls
/// [`read_png_rgb_sized`] instead.
pub fn read_png_rgb(path: &std::path::Path) -> Result<Image, HostError> {
    read_png_rgb_sized(path, |_, _| Ok(()))
}

/// [`read_png_rgb`] that first hands the width and height from the PNG header to `accept` and
/// decodes the pixels only when it returns `Ok`: a file of the wrong size is refused with
/// `accept`'s error before anything the size of its pixels is allocated or inflated (a 2 MB
/// PNG can claim 16384×16384 16-bit pixels, 1.6 GB decoded).
pub fn read_png_rgb_sized(
    path: &std::path::Path,
    accept: impl FnOnce(usize, usize) -> Result<(), HostError>,
) -> Result<Image, HostError> {
    let (file, name) = open_png(path)?;
    decode_png_rgb_sized(file, &name, accept)
}

/// Opens an input PNG for one of the `decode_*` readers: the buffered file and its name for
/// error messages.
pub fn open_png(
    path: &std::path::Path,
) -> Result<(std::io::BufReader<std::fs::File>, String), HostError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|err| HostError::Io {
        path: name.clone(),
        err,
    })?;
    Ok((std::io::BufReader::new(file), name))
}

/// Decodes PNG bytes from `reader` as [`read_png_rgb`] does; `name` labels errors. (Also the
/// entry point of the `png` fuzz target.)
pub fn decode_png_rgb(reader: impl std::io::Read, name: &str) -> Result<Image, HostError> {
    decode_png_rgb_sized(reader, name, |_, _| Ok(()))
}

/// The palette checks the `png` decoder leaves out: its palette expansion indexes PLTE in whole
/// RGB entries and tRNS against them, and panics on a PLTE that is not a whole number of
/// entries or holds more than 256, or on a tRNS with more entries than the palette (found by the
/// `png` fuzz target). The PNG specification forbids all three.
fn check_palette(info: &png::Info<'_>) -> Result<(), String> {
    let entries = match info.palette.as_deref() {
        Some(p) if p.len() % 3 != 0 || p.len() > 3 * 256 => {
            return Err(format!(
                "PLTE chunk of {} bytes (whole RGB entries, at most 256)",
                p.len()
            ))
        }
        Some(p) => p.len() / 3,
        None => 0,
    };
    if info.color_type == png::ColorType::Indexed {
        if entries == 0 {
            return Err("palette image without a PLTE chunk".into());
        }
        if let Some(t) = info.trns.as_deref().filter(|t| t.len() > entries) {
            return Err(format!(
                "tRNS chunk of {} entries for a palette of {entries}",
                t.len()
            ));
        }
    }
    Ok(())
}

/// [`decode_png_rgb`] with the size check of [`read_png_rgb_sized`]: `accept` sees the header's
/// width and height before any pixel is decoded.
pub fn decode_png_rgb_sized(
    reader: impl std::io::Read,
    name: &str,
    accept: impl FnOnce(usize, usize) -> Result<(), HostError>,
) -> Result<Image, HostError> {
    let bad = |err: String| HostError::Png {
        path: name.to_string(),
        err,
    };
    let mut dec = png::Decoder::new(reader);
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
    check_palette(reader.info()).map_err(bad)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    accept(w, h)?;
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(bad(format!("unsupported size {w}x{h}")));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let data = &buf[..frame.buffer_size()];
    let over_white =
        |v: u8, a: u8| -> u8 { ((v as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8 };
    let mut rgb = Vec::with_capacity(w * h * 3);
    match frame.color_type {
        png::ColorType::Rgb => rgb.extend_from_slice(data),
        png::ColorType::Rgba => {
            for p in data.chunks_exact(4) {
                rgb.extend((0..3).map(|c| over_white(p[c], p[3])));
            }
        }
        png::ColorType::Grayscale => {
            for v in data {
                rgb.extend([*v; 3]);
            }
        }
        png::ColorType::GrayscaleAlpha => {
            for p in data.chunks_exact(2) {
                rgb.extend([over_white(p[0], p[1]); 3]);
            }
        }
        png::ColorType::Indexed => return Err(bad("palette not expanded".into())),
    }
    if rgb.len() != w * h * 3 {
        return Err(bad("truncated pixel data".into()));
    }
    Ok(Image {
        width: w,
        height: h,
        rgb,
    })
}

/// Collects the decoder's rows (interleaved RGB in [−1, 1]) into an RGB8 `side × side` image.
pub fn rgb_image<E>(
    side: usize,
    decode: impl FnOnce(&mut dyn FnMut(usize, &[f32])) -> Result<(), E>,
) -> Result<Image, E> {
    let mut rgb = vec![0u8; side * side * 3];
    decode(&mut |y, row| {
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

/// Samples one image in an arena of exactly the planned size: `hook` observes and steers the
/// steps, `policy` picks what refinement passes draw again, `par` runs the kernels (results do
/// not depend on it).
pub fn sample_image(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    hook: &mut dyn StepHook,
    policy: &mut dyn ResamplePolicy,
    par: &dyn Parallel,
) -> srdd_core::Result<Image> {
    let plan = Plan::new(&model.config, &opts, sched)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::with_parallel(model, opts, sched.clone(), arena.as_bytes_mut(), par)?;
    gen.run_with(hook, policy)?;
    rgb_image(model.config.image_side(), |sink| gen.decode(sink))
}

/// Calls a closure after each scale (progress bars).
pub struct Tick<'f>(pub &'f mut dyn FnMut());

impl StepHook for Tick<'_> {
    fn scale_done(&mut self, _k: usize, _t: &[u32], _f: &[f32]) {
        (self.0)()
    }
}

/// Samples `images` images as one batch through the CPU backend (image `i` with seed
/// `opts.seed + i`, its own policy instance): the same images as one at a time. `on_step` is
/// called after each scale of each image.
pub fn sample_batch(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    images: usize,
    policy: &ResampleChoice,
    par: &dyn Parallel,
    on_step: &dyn Fn(),
) -> srdd_core::Result<Vec<Image>> {
    let plan = Plan::batch(&model.config, &opts, sched, images, Compute::Cpu)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut sampler = Sampler::cpu(
        model,
        opts,
        sched.clone(),
        images,
        arena.as_bytes_mut(),
        par,
    )?;
    run_batch(model, &mut sampler, policy, on_step)
}

/// Runs a batch sampler of `model` on any backend to its last scale and decodes every image:
/// the loop that [`sample_batch`] (CPU) and [`backend::sample_batch_cuda`] share. Image `i`
/// gets its own `policy` instance; `on_step` is called after each scale of each image.
pub fn run_batch<F: Forward>(
    model: &Model<'_>,
    sampler: &mut Sampler<'_, '_, F>,
    policy: &ResampleChoice,
    on_step: &dyn Fn(),
) -> srdd_core::Result<Vec<Image>> {
    let images = sampler.images();
    let mut ticks: Vec<_> = (0..images).map(|_| || on_step()).collect();
    let mut hooks: Vec<Tick<'_>> = ticks.iter_mut().map(|t| Tick(t)).collect();
    let mut policies: Vec<Box<dyn ResamplePolicy>> =
        (0..images).map(|_| policy.instance()).collect();
    while !sampler.finished() {
        let mut h: Vec<&mut dyn StepHook> = hooks.iter_mut().map(|t| t as _).collect();
        let mut p: Vec<&mut dyn ResamplePolicy> =
            policies.iter_mut().map(|p| p.as_mut() as _).collect();
        sampler.step(&mut h, &mut p)?;
    }
    let side = model.config.image_side();
    (0..images)
        .map(|i| rgb_image(side, |sink| sampler.decode(i, sink)))
        .collect()
}

/// Samples one image; `on_step` is called after each scale.
pub fn sample_one(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    policy: &mut dyn ResamplePolicy,
    par: &dyn Parallel,
    on_step: &mut dyn FnMut(),
) -> srdd_core::Result<Image> {
    sample_image(model, opts, sched, &mut Tick(on_step), policy, par)
}

/// Lays images out in a grid of `cols` columns (default: near-square), row by row, with `gap`
/// mid-grey pixels between them (neutral against white and black backgrounds alike).
pub fn grid(images: &[Image], cols: Option<usize>, gap: usize) -> Image {
    let n = images.len().max(1);
    let cols = cols
        .unwrap_or((n as f64).sqrt().ceil() as usize)
        .clamp(1, n);
    let rows = n.div_ceil(cols);
    let s = images.first().map_or(1, |i| i.width);
    let w = cols * s + (cols - 1) * gap;
    let h = rows * s + (rows - 1) * gap;
    let mut rgb = vec![GRID_GAP; w * h * 3];
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

/// The grid gap's grey level.
pub const GRID_GAP: u8 = 128;

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

/// Writes `bytes` to `path` through a temporary file next to it (`path` + `.partial`) and a
/// rename: never a half-written file under `path`, and no temporary file left when either step
/// fails.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use png::{BitDepth, ColorType};

    fn write(
        path: &std::path::Path,
        w: u32,
        h: u32,
        ct: png::ColorType,
        bd: png::BitDepth,
        data: &[u8],
        palette: Option<&[u8]>,
    ) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(ct);
        enc.set_depth(bd);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn png_reader_handles_every_color_type() {
        let dir = std::env::temp_dir().join(format!("srdd-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.png");
        // (width, color type, bit depth, data, palette, expected RGB8); one row each.
        type Bytes = &'static [u8];
        type Case = (u32, ColorType, BitDepth, Bytes, Option<Bytes>, Bytes);
        #[rustfmt::skip]
        let cases: [Case; 5] = [
            // RGBA: half-transparent red over white.
            (1, ColorType::Rgba, BitDepth::Eight, &[255, 0, 0, 128], None, &[255, 127, 127]),
            // Gray 8 and gray+alpha.
            (2, ColorType::Grayscale, BitDepth::Eight, &[0, 200], None, &[0, 0, 0, 200, 200, 200]),
            (1, ColorType::GrayscaleAlpha, BitDepth::Eight, &[0, 0], None, &[255, 255, 255]),
            // 16-bit RGB is stripped to 8 bits.
            (1, ColorType::Rgb, BitDepth::Sixteen, &[1, 2, 3, 4, 5, 6], None, &[1, 3, 5]),
            // Palette is expanded.
            (2, ColorType::Indexed, BitDepth::Eight, &[1, 0], Some(&[9, 8, 7, 1, 2, 3]), &[1, 2, 3, 9, 8, 7]),
        ];
        for (w, ct, bd, data, palette, want) in cases {
            write(&p, w, 1, ct, bd, data, palette);
            assert_eq!(read_png_rgb(&p).unwrap().rgb, want, "{ct:?} {bd:?}");
        }
        // Garbage and truncation are typed errors.
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nnope").unwrap();
        assert!(matches!(read_png_rgb(&p), Err(HostError::Png { .. })));
        write(
            &p,
            4,
            4,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &[7; 48],
            None,
        );
        let full = std::fs::read(&p).unwrap();
        for cut in [8, 20, 33, full.len() - 13] {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(
                matches!(read_png_rgb(&p), Err(HostError::Png { .. })),
                "cut {cut}"
            );
        }
        assert!(matches!(
            read_png_rgb(&dir.join("missing.png")),
            Err(HostError::Io { .. })
        ));
    }

    #[test]
    fn write_atomic_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("srdd-atomic-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        let ok = dir.join("out.bin");
        write_atomic(&ok, b"abc").unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
        assert!(!dir.join("out.bin.partial").exists());
        // Renaming a file onto a non-empty directory fails: the temporary file goes too.
        std::fs::write(dir.join("taken").join("x"), b"").unwrap();
        assert!(write_atomic(&dir.join("taken"), b"abc").is_err());
        assert!(!dir.join("taken.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
