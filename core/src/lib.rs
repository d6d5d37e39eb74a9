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
    /// dtype, bounds and alignment) and returns views into it. Never panics on any input.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        let file = format::parse(bytes)?;
        let mut src = format::FileSource::new(&file);
        let weights = Weights::build(&file.header.config, &mut src)?;
        src.finish()?;
        Ok(Model {
            config: file.header.config,
            weights,
            metadata: file.metadata,
        })
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
