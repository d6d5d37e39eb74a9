//! The arena plan of a sampling run: every buffer's size, decided before any work, from the
//! layout tables of the sampler and of the CPU forward backend.
//!
//! ```text
//! arena = [sampler run: f_hat, tokens, next input per image]
//!         [backend run: KV cache (causal)]
//!         [step: sampler step buffers | backend step buffers]  overlaid by  [decoder scratch]
//! ```

use crate::config::{Attention, ModelConfig, WeightFormat};
use crate::error::{Error, Result};
use crate::forward::{CpuForward, CpuRun, CpuStep, MAX_BATCH};
use crate::generate::SampleOptions;
use crate::layout::{arena_layout, BufferInfo, Lifetime};
use crate::resample::TokenStats;
use crate::schedule::Schedule;
use crate::vq::{VqDims, VqScratch};

/// Every dimension the plan, the sampler and the CPU backend share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Images of the batch.
    pub images: usize,
    /// CFG branches per image (1 or 2).
    pub branches: usize,
    /// Rows: `images × branches`.
    pub rows: usize,
    /// Largest step in tokens.
    pub n: usize,
    /// Keys one query can see.
    pub keys: usize,
    /// Tokens held by the KV cache (causal) or 0.
    pub cache: usize,
    pub c: usize,
    pub f: usize,
    pub v: usize,
    pub cv: usize,
    pub p: usize,
    pub depth: usize,
    pub int8: bool,
    /// Tokens per FFN / head chunk, per row.
    pub chunk: usize,
    /// Rows that go through each block's weights together (their chunks stacked): all rows,
    /// except with one-token chunks (the low-memory options), where one row's step scratch at
    /// a time keeps the arena smallest.
    pub group: usize,
    /// Whether any step refines.
    pub refine: bool,
    /// Decoder band rows (0: whole image).
    pub band_rows: usize,
}

impl Shape {
    pub(crate) fn new(
        cfg: &ModelConfig,
        opts: &SampleOptions,
        sched: &Schedule,
        images: usize,
    ) -> Shape {
        let n = sched.max_tokens();
        let cache = match opts.attention {
            Attention::Causal => sched.total_tokens(),
            Attention::Markov => 0,
        };
        let branches = opts.rows();
        let rows = images * branches;
        Shape {
            images,
            branches,
            rows,
            n,
            keys: if cache > 0 { cache } else { n },
            cache,
            c: cfg.var.embed_dim as usize,
            f: cfg.var.ffn_hidden as usize,
            v: cfg.vae.vocab_size as usize,
            cv: cfg.vae.cvae as usize,
            p: cfg.latent_side(),
            depth: cfg.var.depth as usize,
            int8: cfg.weights == WeightFormat::Int8,
            chunk: opts.chunk_tokens().min(n).max(1),
            group: if opts.chunk_tokens() == 1 { 1 } else { rows },
            refine: opts.any_refine(),
            band_rows: opts.band_rows as usize,
        }
    }

    /// Sizes of the `f_hat` bookkeeping.
    pub(crate) fn vq(&self) -> VqDims {
        VqDims {
            cv: self.cv,
            n: self.n,
            p: self.p,
        }
    }

    /// `len` when refinement is planned, else 0.
    pub(crate) fn if_refine(&self, len: usize) -> usize {
        if self.refine {
            len
        } else {
            0
        }
    }
}

arena_layout! {
    /// What the sampler keeps for the whole run.
    pub(crate) struct SamplerRun<'s>(s: &Shape) {
        /// The accumulated latent of every image.
        f_hat: [f32; s.images * s.cv * s.p * s.p] = "f_hat (images x Cvae x P x P)",
        /// Tokens of the current step.
        tokens: [u32; s.images * s.n] = "step tokens (images x tokens)",
        /// The next step's input `area(f_hat, pn)`.
        next_in: [f32; s.images * s.cv * s.n] = "next input area(f_hat) (images x Cvae x tokens)",
    }
}

arena_layout! {
    /// What the sampler uses during one step.
    pub(crate) struct SamplerStep<'s>(s: &Shape) {
        /// Raw, then guided logits of one chunk.
        logits: [f32; s.rows * s.chunk * s.v] = "logits (rows x chunk x V)",
        /// Filtering scratch of one draw.
        samp: [f32; s.v] = "sampling scratch (V)",
        /// `f_hat + contribution` of a refinement pass.
        draft: [f32; s.if_refine(s.cv * s.p * s.p)] = "refinement: draft f_hat (Cvae x P x P)",
        /// Features of every drawn token.
        stats: [TokenStats; s.if_refine(s.images * s.n)] =
            "refinement: token features (images x tokens x 2)",
        /// Tokens a refinement pass draws again.
        flags: [u8; s.if_refine(s.images * s.n)] = "refinement: resample flags (images x tokens)",
    }
}

/// Where a run computes, which decides what its arena holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// [`CpuForward`]: its KV cache, step scratch and decoder scratch are in the arena too.
    Cpu,
    /// A backend with its own memory: the arena holds the sampler's buffers only.
    Device,
}

/// Arena layout of one sampling run: every buffer's size, decided before any work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Images sampled together.
    pub images: usize,
    /// CFG rows per image (1 or 2).
    pub rows: usize,
    /// Largest step in tokens.
    pub max_tokens: usize,
    /// Keys one query can see (markov: `max_tokens`, causal: all tokens of the schedule).
    pub max_keys: usize,
    /// Tokens held by the KV cache (causal) or 0.
    pub cache_tokens: usize,
    /// Bytes that live for the whole run (f_hat, tokens, next input, KV cache…).
    pub persistent_bytes: usize,
    /// Of which the KV cache.
    pub kv_cache_bytes: usize,
    /// Scratch of one scale step.
    pub step_bytes: usize,
    /// Scratch of the decoder (reuses the step scratch).
    pub decode_bytes: usize,
    /// Every buffer: (name, bytes, lifetime), in arena order.
    pub buffers: heapless::Vec<BufferInfo, 48>,
}

impl Plan {
    /// Plans one image with `opts` on `sched` for a model with `cfg` (CPU backend).
    pub fn new(cfg: &ModelConfig, opts: &SampleOptions, sched: &Schedule) -> Result<Plan> {
        Plan::batch(cfg, opts, sched, 1, Compute::Cpu)
    }

    /// Plans `images` images sampled together; with [`Compute::Device`] only the sampler's
    /// buffers live in the arena.
    pub fn batch(
        cfg: &ModelConfig,
        opts: &SampleOptions,
        sched: &Schedule,
        images: usize,
        compute: Compute,
    ) -> Result<Plan> {
        let cpu = compute == Compute::Cpu;
        sched.validate(cfg)?;
        opts.validate(cfg)?;
        if opts.table.is_some_and(|t| t.len != sched.len()) {
            return Err(Error::BadOption(
                "the step table's length differs from the schedule's",
            ));
        }
        if images == 0 || images > MAX_BATCH {
            return Err(Error::BadOption("a batch holds 1 to 64 images"));
        }
        let s = Shape::new(cfg, opts, sched, images);
        let mut buffers = heapless::Vec::new();
        let mut add = |list: &[(&'static str, usize)], life: Lifetime| {
            for &(name, b) in list {
                let _ = buffers.push((name, b, life));
            }
        };
        add(&SamplerRun::buffers(&s), Lifetime::Run);
        let (mut kv, mut backend_step, mut decode) = (0, 0, 0);
        if cpu {
            add(&CpuRun::buffers(&s), Lifetime::Run);
            kv = CpuRun::bytes(&s);
        }
        add(&SamplerStep::buffers(&s), Lifetime::Step);
        add(&VqScratch::buffers(&s.vq()), Lifetime::Step);
        if cpu {
            add(&CpuStep::buffers(&s), Lifetime::Step);
            backend_step = CpuStep::bytes(&s);
            decode = CpuForward::decode_bytes(cfg, &s);
            add(&[("VQVAE decoder scratch", decode)], Lifetime::Decode);
        }
        Ok(Plan {
            buffers,
            images,
            rows: s.branches,
            max_tokens: s.n,
            max_keys: s.keys,
            cache_tokens: s.cache,
            persistent_bytes: SamplerRun::bytes(&s) + kv,
            kv_cache_bytes: kv,
            step_bytes: SamplerStep::bytes(&s) + VqScratch::bytes(&s.vq()) + backend_step,
            decode_bytes: decode,
        })
    }

    /// Exact arena bytes the run needs.
    pub fn arena_bytes(&self) -> usize {
        self.persistent_bytes + self.step_bytes.max(self.decode_bytes)
    }
}
