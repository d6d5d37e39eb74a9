//! # srdd-core
//!
//! A `#![no_std]`, allocation-free inference engine for SRDD — VAR (next-scale prediction) read as
//! a discrete diffusion with a Markovian, block-diagonal attention mask — and for the official
//! block-causal VAR. It runs the transformer, the multi-scale VQ bookkeeping, the VQVAE decoder and
//! encoder and the sampler out of a caller-provided byte arena whose exact size ([`Plan`]) is known
//! before any work starts. Weights are f32, f16 or int8 (per-output-channel symmetric, with int8
//! dynamically quantized activations and i32 accumulation).
//!
//! Pipeline rooms: [`format`] (the `.srdd` file), [`weights`] (zero-copy views), [`kernels`],
//! the transformer (`var`), the quantizer bookkeeping (`vq`), [`vae`] (decoder/encoder),
//! [`forward`] (the compute seam: the [`Forward`] trait and [`CpuForward`]), [`generate`] (options,
//! the arena [`Plan`], the backend-agnostic [`Sampler`] and the one-image [`Generator`]),
//! [`sample`], [`resample`] (refinement policies) and [`tokenize`] (image → tokens).
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use srdd_core::aligned::AlignedBytes;
//! use srdd_core::{Generator, Model, NoHook, Plan, SampleOptions, Schedule};
//!
//! // Load: validate the file and view its weights in place (64-byte aligned bytes).
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default-int8.srdd");
//! let bytes = AlignedBytes::read(path.as_ref()).expect("model file");
//! let model = Model::from_bytes(bytes.as_bytes())?;
//! // Plan: the model's own sampling defaults, the exact arena before any work.
//! let label = model.class_index("smileys").expect("a class name stored in the model");
//! let opts = SampleOptions { seed: 7, ..SampleOptions::for_model(&model, label) };
//! let sched = Schedule::full(&model.config);
//! let plan = Plan::new(&model.config, &opts, &sched)?;
//! let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
//! // Sample every scale, then decode row by row.
//! let mut gen = Generator::new(&model, opts, sched, arena.as_bytes_mut())?;
//! gen.run(&mut NoHook)?;
//! let side = model.config.image_side();
//! let mut rows = 0;
//! gen.decode(&mut |_y, rgb| {
//!     assert_eq!(rgb.len(), 3 * side); // interleaved RGB in [-1, 1]
//!     rows += 1;
//! })?;
//! assert_eq!(rows, side);
//! # }
//! # Ok::<(), srdd_core::Error>(())
//! ```
//!
//! References: Tian et al., *Visual Autoregressive Modeling* (NeurIPS 2024, FoundationVision/VAR);
//! Kumar et al., *Scale-Wise VAR is Secretly Discrete Diffusion* (arXiv 2509.22636).
#![no_std]
#![deny(missing_docs)]
// Kernels take many dimensions and index several buffers in lock-step; both lints fight that.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

#[cfg(feature = "std")]
extern crate std;

pub mod aligned;
pub mod arena;
pub mod config;
pub mod edit;
pub mod error;
pub mod format;
pub mod forward;
pub mod generate;
pub mod kernels;
pub(crate) mod layout;
pub mod macs;
pub(crate) mod math;
pub mod parallel;
pub mod resample;
pub mod sample;
pub(crate) mod schedule;
pub mod tokenize;
pub mod vae;
pub(crate) mod var;
pub(crate) mod vq;
pub mod weights;

pub use config::{Attention, ModelConfig, WeightFormat};
pub use error::{Error, Result};
pub use forward::{CpuForward, Forward};
pub use generate::{
    Generator, Guidance, NoHook, Plan, SampleOptions, Sampler, StepHook, StepSettings, StepTable,
};
pub use schedule::Schedule;
pub use weights::Weights;

/// Largest guidance strength `cfg` (also the bound of the `default_cfg` metadata).
pub(crate) const MAX_CFG: f32 = 1000.0;

/// Metadata keys whose values the engine or the CLI parse ([`Model::check_metadata`]).
pub const TYPED_METADATA: [&str; 5] = [
    "class_names",
    "default_cfg",
    "default_top_k",
    "default_top_p",
    "resample_policy",
];

/// `class_names`: `num_classes` comma-separated names that [`Model::class_index`] can all reach
/// (its matching is trimmed and case-insensitive, so duplicates are judged the same way).
fn check_class_names(names: &str, num_classes: u32) -> Result<()> {
    let bad = |what| {
        Err(Error::BadMetadata {
            key: "class_names",
            what,
        })
    };
    if names.split(',').count() != num_classes as usize {
        return bad("needs exactly num_classes comma-separated names");
    }
    for (i, name) in names.split(',').map(str::trim).enumerate() {
        if name.is_empty() {
            return bad("a name is empty");
        }
        if name.parse::<u32>().is_ok() || name.eq_ignore_ascii_case("null") {
            return bad("a name is a number or `null`, which select labels instead");
        }
        if names
            .split(',')
            .take(i)
            .any(|other| other.trim().eq_ignore_ascii_case(name))
        {
            return bad("a name appears twice (names match case-insensitively)");
        }
    }
    Ok(())
}

/// A loaded model: its configuration and zero-copy views into the model bytes.
pub struct Model<'a> {
    /// Hyper-parameters from the header.
    pub config: ModelConfig,
    /// Weight views.
    pub weights: Weights<'a>,
    /// Metadata text of the file (`key=value` lines).
    pub metadata: &'a str,
}

impl<'a> Model<'a> {
    /// Validates an `.srdd` file (magic, version, length, checksum, every tensor's name, shape,
    /// dtype, bounds and alignment, and that every float value is finite: a NaN or infinity in
    /// an f32/f16 tensor or an int8 scale is [`Error::NonFinite`]) and returns views into it.
    /// Never panics on any input.
    /// The typed metadata keys must also agree with the configuration
    /// ([`Model::check_metadata`]).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        let file = format::parse(bytes)?;
        Model::check_metadata(file.metadata, &file.header.config)?;
        let mut src = format::FileSource::new(&file);
        let weights = Weights::build(&file.header.config, &mut src)?;
        src.finish()?;
        Ok(Model {
            config: file.header.config,
            weights,
            metadata: file.metadata,
        })
    }

    /// Checks the metadata keys the engine reads against `config`: `class_names` (exactly
    /// `num_classes` distinct, non-empty names that are neither numbers nor `null`, since
    /// [`Model::class_index`] reads those as labels), `default_cfg` in `[0, 1000]`,
    /// `default_top_k` a whole number in `[0, vocab_size]`, `default_top_p` in `[0, 1]` (the
    /// bounds of [`SampleOptions::validate`]) and `resample_policy` (4 finite numbers). Each
    /// may appear once; other keys are free text.
    pub fn check_metadata(metadata: &str, config: &ModelConfig) -> Result<()> {
        let bad = |key, what| Err(Error::BadMetadata { key, what });
        let number = |v: &str| v.trim().parse::<f32>().ok().filter(|x| x.is_finite());
        for key in TYPED_METADATA {
            let mut values = metadata.lines().filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k == key).then_some(v)
            });
            let Some(v) = values.next() else { continue };
            if values.next().is_some() {
                return bad(key, "the key appears more than once");
            }
            match key {
                "class_names" => check_class_names(v, config.var.num_classes)?,
                "default_cfg" if !number(v).is_some_and(|x| (0.0..=MAX_CFG).contains(&x)) => {
                    return bad(key, "must be a number in [0, 1000]");
                }
                "default_top_k"
                    if !v
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|k| k <= config.vae.vocab_size) =>
                {
                    return bad(key, "must be a whole number in [0, vocab_size]");
                }
                "default_top_p" if !number(v).is_some_and(|x| (0.0..=1.0).contains(&x)) => {
                    return bad(key, "must be a number in [0, 1]");
                }
                "resample_policy"
                    if v.split(',').count() != 4 || v.split(',').any(|x| number(x).is_none()) =>
                {
                    return bad(key, "must be 4 comma-separated finite numbers");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The value of metadata key `key`, if present.
    pub fn meta(&self, key: &str) -> Option<&'a str> {
        self.metadata.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Class label for `name`: a number, or one of the comma-separated `class_names`.
    pub fn class_index(&self, name: &str) -> Option<u32> {
        if let Ok(n) = name.parse::<u32>() {
            return Some(n);
        }
        if name == "null" {
            return Some(self.config.var.num_classes);
        }
        self.meta("class_names")?
            .split(',')
            .position(|c| c.trim().eq_ignore_ascii_case(name))
            .map(|i| i as u32)
    }
}
