//! The per-image loop: plan the arena, then for each scale build the input tokens from `f_hat`,
//! run the blocks, mix CFG logits, sample, and accumulate the scale into `f_hat`; finally decode.
//!
//! ```text
//! Generator::new   f_hat = 0
//! step() × steps   AdaLN vectors for the cond (and null) row (per step, not per image: their
//!                  arena is reused by the step; ~1 % of a small model's MACs, see `macs`)
//!                  input = SOS | word_embed(area(f_hat, pn)) + lvl_pos
//!                  → blocks (markov: this scale only | causal: + KV cache)
//!                  → head → (1+t)·cond − t·uncond → sample → hook.force
//!                  → f_hat += Phi(bicubic(codebook[idx], P))
//! decode(sink)     VQVAE decoder, one image row at a time to the sink
//! ```

use crate::arena::{bytes_of, Arena};
use crate::config::MAX_SCALES;
use crate::config::{Attention, ModelConfig, WeightFormat};
use crate::error::{Error, Result};
use crate::kernels::{linear, linear_scratch_len, LinearScratch};
use crate::parallel::{Parallel, Sequential};
use crate::resample::{token_stats, ResamplePolicy, TokenStats};
use crate::sample::{sample_token, Rng};
use crate::schedule::Schedule;
use crate::var::{ada_vectors, block_forward, head_logits, Kv, StepScratch, DEFAULT_CHUNK};
use crate::vq::{area_resize, contribution_scratch_len, scale_contribution};
use crate::{vae, Model};

/// How classifier-free guidance weights each scale (a [`StepTable`] gives any other table).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Guidance {
    /// No guidance and no null-class row (teacher forcing, or plain conditional sampling).
    Off,
    /// Official ramp: `t = cfg · k / (steps − 1)`.
    Linear,
    /// `t = cfg` at every step.
    Constant,
}

/// Sampling settings of one step: one row of the sampling plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    /// Guidance weight `t`: logits `(1 + t)·cond − t·uncond`.
    pub guidance: f32,
    /// Logit temperature.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Nucleus mass (0: off).
    pub top_p: f32,
    /// Refinement passes after the step's first draw (ignored on the first step, whose input is
    /// the class token, not `f_hat`).
    pub refine: u8,
}

/// An explicit per-step table of settings (one row per schedule step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTable {
    /// Rows; only the first `len` are used.
    pub rows: [StepSettings; MAX_SCALES],
    /// Number of rows (must equal the schedule's steps).
    pub len: usize,
}

impl StepTable {
    /// A table of `len` rows, each `row`.
    pub fn filled(row: StepSettings, len: usize) -> StepTable {
        StepTable {
            rows: [row; MAX_SCALES],
            len: len.min(MAX_SCALES),
        }
    }
}

/// Options of one sampling run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// Class label; `num_classes` is the null class.
    pub label: u32,
    /// Guidance strength.
    pub cfg: f32,
    /// Guidance schedule.
    pub guidance: Guidance,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Nucleus mass (0: off).
    pub top_p: f32,
    /// Logit temperature.
    pub temperature: f32,
    /// RNG seed.
    pub seed: u64,
    /// Attention policy.
    pub attention: Attention,
    /// Refinement passes on every step after the first.
    pub refine: u8,
    /// Per-step settings; when present they replace `cfg`/`guidance`/`top_k`/`top_p`/
    /// `temperature`/`refine` step by step.
    pub table: Option<StepTable>,
    /// Tokens per FFN / head chunk (0: [`DEFAULT_CHUNK`]). Results do not depend on it; smaller
    /// chunks need fewer arena bytes.
    pub chunk: u16,
    /// Decode in bands of this many image rows (0: the whole image at once). Results do not
    /// depend on it; bands need far fewer arena bytes and take longer (one pass per banded
    /// GroupNorm).
    pub band_rows: u16,
}

impl SampleOptions {
    /// The official defaults for `label`: cfg 1.5 on the linear ramp, top-k 900, top-p 0.96,
    /// Markovian attention, no refinement.
    pub fn new(label: u32) -> Self {
        SampleOptions {
            label,
            cfg: 1.5,
            guidance: Guidance::Linear,
            top_k: 900,
            top_p: 0.96,
            temperature: 1.0,
            seed: 0,
            attention: Attention::Markov,
            refine: 0,
            table: None,
            chunk: 0,
            band_rows: 0,
        }
    }

    /// [`SampleOptions::new`] with the smallest arena: one-token chunks and a decoder that
    /// works one image row at a time (same results, slower; what the firmware uses).
    pub fn low_memory(label: u32) -> Self {
        SampleOptions {
            chunk: 1,
            band_rows: 1,
            ..SampleOptions::new(label)
        }
    }

    /// Checks ranges against the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if self.label > cfg.var.num_classes {
            return Err(Error::ClassOutOfRange {
                label: self.label,
                num_classes: cfg.var.num_classes,
            });
        }
        if !(self.cfg.is_finite() && (0.0..=1000.0).contains(&self.cfg)) {
            return Err(Error::BadOption("cfg must be a finite value in [0, 1000]"));
        }
        let row = StepSettings {
            guidance: 0.0,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            refine: self.refine,
        };
        check_row(&row, cfg)?;
        if self.band_rows as usize > cfg.image_side() {
            return Err(Error::BadOption("band rows exceed the image height"));
        }
        if let Some(t) = &self.table {
            if t.len == 0 || t.len > MAX_SCALES {
                return Err(Error::BadOption("the step table is empty or too long"));
            }
            for r in &t.rows[..t.len] {
                if !(r.guidance.is_finite() && (-1000.0..=1000.0).contains(&r.guidance)) {
                    return Err(Error::BadOption(
                        "a guidance weight must be a finite value in [-1000, 1000]",
                    ));
                }
                check_row(r, cfg)?;
            }
        }
        Ok(())
    }

    pub(crate) fn rows(&self) -> usize {
        let table_guides = self
            .table
            .is_some_and(|t| t.rows[..t.len].iter().any(|r| r.guidance != 0.0));
        match (self.guidance, table_guides) {
            (Guidance::Off, false) => 1,
            _ => 2,
        }
    }

    fn chunk_tokens(&self) -> usize {
        if self.chunk == 0 {
            DEFAULT_CHUNK
        } else {
            self.chunk as usize
        }
    }

    /// Guidance weight `t` of step `k` of `steps`.
    pub fn guidance_at(&self, k: usize, steps: usize) -> f64 {
        if let Some(t) = &self.table {
            return t.rows.get(k).map_or(0.0, |r| r.guidance as f64);
        }
        match self.guidance {
            Guidance::Off => 0.0,
            Guidance::Constant => self.cfg as f64,
            Guidance::Linear => {
                let ratio = if steps > 1 {
                    k as f64 / (steps - 1) as f64
                } else {
                    0.0
                };
                self.cfg as f64 * ratio
            }
        }
    }

    /// The settings of step `k` of `steps`: the table's row, or the global values.
    pub fn settings(&self, k: usize, steps: usize) -> StepSettings {
        let mut s = match &self.table {
            Some(t) => t.rows[k.min(MAX_SCALES - 1)],
            None => StepSettings {
                guidance: 0.0,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                refine: self.refine,
            },
        };
        s.guidance = self.guidance_at(k, steps) as f32;
        if k == 0 {
            s.refine = 0;
        }
        s
    }

    fn any_refine(&self) -> bool {
        match &self.table {
            Some(t) => t.rows[1.min(t.len)..t.len].iter().any(|r| r.refine > 0),
            None => self.refine > 0,
        }
    }
}

fn check_row(r: &StepSettings, cfg: &ModelConfig) -> Result<()> {
    if r.top_k > cfg.vae.vocab_size {
        return Err(Error::BadOption("top-k exceeds the vocabulary size"));
    }
    if !(r.top_p.is_finite() && (0.0..=1.0).contains(&r.top_p)) {
        return Err(Error::BadOption("top-p must be in [0, 1]"));
    }
    if !(r.temperature.is_finite() && r.temperature > 0.0) {
        return Err(Error::BadOption("temperature must be finite and > 0"));
    }
    if r.refine > MAX_REFINE {
        return Err(Error::BadOption("at most 16 refinement passes per step"));
    }
    Ok(())
}

/// Most refinement passes one step may ask for.
pub const MAX_REFINE: u8 = 16;

/// Observes and steers the loop; every method has a no-op default.
pub trait StepHook {
    /// Conditional logits of token `t` of step `k`, before guidance and filtering.
    fn logits(&mut self, _k: usize, _t: usize, _cond: &[f32]) {}
    /// Guided logits of token `t` of step `k` (after the CFG mix, before filtering).
    fn guided_logits(&mut self, _k: usize, _t: usize, _logits: &[f32]) {}
    /// May overwrite sampled tokens of step `k` (editing, teacher forcing).
    fn force(&mut self, _k: usize, _pn: usize, _tokens: &mut [u32]) {}
    /// Called after step `k` updated `f_hat`.
    fn scale_done(&mut self, _k: usize, _tokens: &[u32], _f_hat: &[f32]) {}
}

/// A hook that does nothing.
pub struct NoHook;
impl StepHook for NoHook {}

/// Arena layout of one sampling run: every buffer's size, decided before any work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// CFG rows (1 or 2).
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
    pub buffers: heapless::Vec<(&'static str, usize, Lifetime), 32>,
}

/// When a planned buffer is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// From `Generator::new` to the end of the run.
    Run,
    /// During one scale step (the region is reused by the next step and by the decoder).
    Step,
    /// During decoding (overlays the step scratch).
    Decode,
}

impl Plan {
    /// Plans `opts` on `sched` for a model with `cfg`.
    pub fn new(cfg: &ModelConfig, opts: &SampleOptions, sched: &Schedule) -> Result<Plan> {
        sched.validate(cfg)?;
        opts.validate(cfg)?;
        if opts.table.is_some_and(|t| t.len != sched.len()) {
            return Err(Error::BadOption(
                "the step table's length differs from the schedule's",
            ));
        }
        let s = Sizes::new(cfg, opts, sched);
        let mut buffers = heapless::Vec::new();
        for (name, b) in s.persistent_buffers() {
            let _ = buffers.push((name, b, Lifetime::Run));
        }
        for (name, b) in s.step_buffers() {
            let _ = buffers.push((name, b, Lifetime::Step));
        }
        let _ = buffers.push((
            "VQVAE decoder scratch",
            vae::decoder_scratch_bytes(cfg, opts.band_rows as usize),
            Lifetime::Decode,
        ));
        Ok(Plan {
            buffers,
            rows: s.rows,
            max_tokens: s.n,
            max_keys: s.keys,
            cache_tokens: s.cache,
            persistent_bytes: s.persistent_bytes(),
            kv_cache_bytes: 2 * bytes_of::<f32>(s.kv_len()),
            step_bytes: s.step_bytes(),
            decode_bytes: vae::decoder_scratch_bytes(cfg, opts.band_rows as usize),
        })
    }

    /// Exact arena bytes the run needs.
    pub fn arena_bytes(&self) -> usize {
        self.persistent_bytes + self.step_bytes.max(self.decode_bytes)
    }
}

/// Every dimension the plan and the generator share.
struct Sizes {
    rows: usize,
    n: usize,
    keys: usize,
    cache: usize,
    c: usize,
    f: usize,
    v: usize,
    cv: usize,
    p: usize,
    depth: usize,
    int8: bool,
    chunk: usize,
    refine: bool,
}

impl Sizes {
    fn new(cfg: &ModelConfig, opts: &SampleOptions, sched: &Schedule) -> Sizes {
        let n = sched.max_tokens();
        let cache = match opts.attention {
            Attention::Causal => sched.total_tokens(),
            Attention::Markov => 0,
        };
        Sizes {
            rows: opts.rows(),
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
            refine: opts.any_refine(),
        }
    }
    fn kv_len(&self) -> usize {
        self.depth * self.rows * self.cache * self.c
    }
    /// Buffers that live for the whole run, in allocation order (name, bytes).
    fn persistent_buffers(&self) -> [(&'static str, usize); 5] {
        let Sizes { n, cv, p, .. } = *self;
        [
            ("f_hat", bytes_of::<f32>(cv * p * p)),
            ("KV cache keys", bytes_of::<f32>(self.kv_len())),
            ("KV cache values", bytes_of::<f32>(self.kv_len())),
            ("step tokens", bytes_of::<u32>(n)),
            ("next input area(f_hat)", bytes_of::<f32>(cv * n)),
        ]
    }
    fn persistent_bytes(&self) -> usize {
        self.persistent_buffers().iter().map(|b| b.1).sum()
    }
    /// Scratch of one scale step, in allocation order (name, bytes).
    fn step_buffers(&self) -> [(&'static str, usize); 23] {
        let Sizes {
            rows,
            n,
            keys,
            c,
            f,
            v,
            cv,
            p,
            depth,
            chunk: hc,
            refine,
            ..
        } = *self;
        let (lf, lq) = self.lin_len();
        let r = |b: usize| if refine { b } else { 0 };
        [
            (
                "AdaLN vectors (rows x depth x 6C)",
                bytes_of::<f32>(rows * depth * 6 * c),
            ),
            (
                "head scale/shift (rows x 2C)",
                bytes_of::<f32>(rows * 2 * c),
            ),
            (
                "hidden states (rows x tokens x C)",
                bytes_of::<f32>(rows * n * c),
            ),
            (
                "keys, values of this scale (tokens x 2C, markov)",
                bytes_of::<f32>(self.kv_scale_len()),
            ),
            ("modulated LN (chunk x C)", bytes_of::<f32>(hc * c)),
            ("queries (chunk x C)", bytes_of::<f32>(hc * c)),
            ("attention out (chunk x C)", bytes_of::<f32>(hc * c)),
            ("branch output (chunk x C)", bytes_of::<f32>(hc * c)),
            ("FFN hidden (chunk x F)", bytes_of::<f32>(hc * f.max(2 * c))),
            ("attention scores (keys)", bytes_of::<f32>(keys)),
            ("activation scales", bytes_of::<f32>(lf)),
            ("int8 activations", bytes_of::<i8>(lq)),
            ("AdaLN condition tmp (7C)", bytes_of::<f32>(7 * c)),
            ("word-embed input (tokens x Cvae)", bytes_of::<f32>(n * cv)),
            ("cond logits (chunk x V)", bytes_of::<f32>(hc * v)),
            ("uncond logits (chunk x V)", bytes_of::<f32>(hc * v)),
            ("sampling scratch (V)", bytes_of::<f32>(v)),
            ("head LN (chunk x C)", bytes_of::<f32>(hc * c)),
            ("codebook map h (Cvae x tokens)", bytes_of::<f32>(cv * n)),
            (
                "f_hat contribution + resize scratch",
                bytes_of::<f32>(cv * p * p)
                    + bytes_of::<f32>(contribution_scratch_len(cv, n.isqrt(), p)),
            ),
            ("refinement: draft f_hat", r(bytes_of::<f32>(cv * p * p))),
            (
                "refinement: token features (tokens x 2)",
                r(bytes_of::<TokenStats>(n)),
            ),
            ("refinement: resample flags", r(bytes_of::<u8>(n))),
        ]
    }
    fn step_bytes(&self) -> usize {
        self.step_buffers().iter().map(|b| b.1).sum()
    }
    fn lin_len(&self) -> (usize, usize) {
        let Sizes {
            n, c, f, cv, chunk, ..
        } = *self;
        let (fa, qa) = linear_scratch_len(chunk, c.max(f));
        let (fc, qc) = linear_scratch_len(n, cv);
        let q = if self.int8 { qa.max(qc) } else { 0 };
        (fa.max(fc).max(1), q)
    }
    fn kv_scale_len(&self) -> usize {
        if self.cache > 0 {
            0
        } else {
            self.n * 2 * self.c
        }
    }
}

struct StepBufs<'s> {
    ada: &'s mut [f32],
    head_ada: &'s mut [f32],
    hidden: &'s mut [f32],
    st: StepScratch<'s>,
    ada_tmp: &'s mut [f32],
    win: &'s mut [f32],
    logit_c: &'s mut [f32],
    logit_u: &'s mut [f32],
    samp: &'s mut [f32],
    head_xn: &'s mut [f32],
    h: &'s mut [f32],
    contrib: &'s mut [f32],
    cscratch: &'s mut [f32],
    draft: &'s mut [f32],
    stats: &'s mut [TokenStats],
    resample: &'s mut [bool],
}

fn take_step<'s>(s: &Sizes, ar: &mut Arena<'s>) -> Result<StepBufs<'s>> {
    let Sizes {
        rows,
        n,
        keys,
        c,
        f,
        v,
        cv,
        p,
        chunk,
        refine,
        ..
    } = *s;
    let (lf, lq) = s.lin_len();
    let r = |len: usize| if refine { len } else { 0 };
    Ok(StepBufs {
        ada: ar.take(rows * s.depth * 6 * c)?,
        head_ada: ar.take(rows * 2 * c)?,
        hidden: ar.take(rows * n * c)?,
        st: StepScratch {
            kv: ar.take(s.kv_scale_len())?,
            xn: ar.take(chunk * c)?,
            q: ar.take(chunk * c)?,
            att: ar.take(chunk * c)?,
            tmp: ar.take(chunk * c)?,
            ffn: ar.take(chunk * f.max(2 * c))?,
            chunk,
            scores: ar.take(keys)?,
            lin: LinearScratch {
                f: ar.take(lf)?,
                q: ar.take(lq)?,
            },
        },
        ada_tmp: ar.take(7 * c)?,
        win: ar.take(n * cv)?,
        logit_c: ar.take(chunk * v)?,
        logit_u: ar.take(chunk * v)?,
        samp: ar.take(v)?,
        head_xn: ar.take(chunk * c)?,
        h: ar.take(cv * n)?,
        contrib: ar.take(cv * p * p)?,
        cscratch: ar.take(contribution_scratch_len(cv, n.isqrt(), p))?,
        draft: ar.take(r(cv * p * p))?,
        stats: ar.take(r(n))?,
        resample: {
            let flags = ar.take::<u8>(r(n))?;
            flags.iter_mut().for_each(|f| *f = 0);
            // SAFETY: every byte is 0, a valid `bool`; the slice keeps the arena borrow.
            unsafe {
                core::slice::from_raw_parts_mut(flags.as_mut_ptr().cast::<bool>(), flags.len())
            }
        },
    })
}

/// One image's sampling run over a caller-provided arena.
pub struct Generator<'m, 'a> {
    model: &'m Model<'m>,
    par: &'m dyn Parallel,
    opts: SampleOptions,
    sched: Schedule,
    sizes: Sizes,
    k: usize,
    st: State<'a>,
    scratch: &'a mut [u8],
}

/// The buffers that live for the whole run.
struct State<'a> {
    rng: Rng,
    f_hat: &'a mut [f32],
    kv_k: &'a mut [f32],
    kv_v: &'a mut [f32],
    tokens: &'a mut [u32],
    next_in: &'a mut [f32],
}

impl<'m, 'a> Generator<'m, 'a> {
    /// Checks options, schedule and arena size.
    pub fn new(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        arena: &'a mut [u8],
    ) -> Result<Self> {
        Self::with_parallel(model, opts, sched, arena, &Sequential)
    }

    /// As [`Generator::new`], running kernels on `par` (results are identical).
    pub fn with_parallel(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        arena: &'a mut [u8],
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        let cfg = &model.config;
        let plan = Plan::new(cfg, &opts, &sched)?;
        if arena.len() < plan.arena_bytes() {
            return Err(Error::ArenaTooSmall {
                needed: plan.arena_bytes(),
                given: arena.len(),
            });
        }
        let s = Sizes::new(cfg, &opts, &sched);
        let mut ar = Arena::new(arena)?;
        let Sizes { n, cv, p, .. } = s;
        let f_hat = ar.take::<f32>(cv * p * p)?;
        f_hat.iter_mut().for_each(|v| *v = 0.0);
        let kv_k = ar.take::<f32>(s.kv_len())?;
        let kv_v = ar.take::<f32>(s.kv_len())?;
        let tokens = ar.take::<u32>(n)?;
        let next_in = ar.take::<f32>(cv * n)?;
        let scratch = ar.take::<u8>(ar.remaining())?;
        Ok(Generator {
            model,
            par,
            opts,
            sched,
            sizes: s,
            k: 0,
            st: State {
                rng: Rng::new(opts.seed),
                f_hat,
                kv_k,
                kv_v,
                tokens,
                next_in,
            },
            scratch,
        })
    }

    /// The schedule being run.
    pub fn schedule(&self) -> &Schedule {
        &self.sched
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.k
    }

    /// True when every step has run.
    pub fn finished(&self) -> bool {
        self.k == self.sched.len()
    }

    /// The accumulated latent (`Cvae × P × P`).
    pub fn f_hat(&self) -> &[f32] {
        self.st.f_hat
    }

    /// Runs the next scale; refinement passes (if any) draw again the least confident quarter of
    /// the tokens ([`crate::resample::FixedFraction`] 0.25).
    pub fn step(&mut self, hook: &mut dyn StepHook) -> Result<()> {
        self.step_with(hook, &mut crate::resample::FixedFraction { fraction: 0.25 })
    }

    /// Runs the next scale, choosing the tokens each refinement pass draws again with `policy`.
    pub fn step_with(
        &mut self,
        hook: &mut dyn StepHook,
        policy: &mut dyn ResamplePolicy,
    ) -> Result<()> {
        if self.finished() {
            return Err(Error::WrongState("all scales already sampled"));
        }
        let Sizes { cv, p, v, .. } = self.sizes;
        let k = self.k;
        let steps = self.sched.len();
        let pn = self.sched.pn[k] as usize;
        let n = pn * pn;
        let settings = self.opts.settings(k, steps);
        let refine = settings.refine as usize;
        let st = &mut self.st;
        let ctx = Ctx {
            model: self.model,
            par: self.par,
            opts: &self.opts,
            sched: &self.sched,
            sizes: &self.sizes,
            settings,
            k,
        };

        let mut ar = Arena::new(&mut *self.scratch)?;
        let mut b = take_step(&self.sizes, &mut ar)?;
        ctx.ada_vectors(&mut b);

        // 1-3. Input from f_hat, blocks, head, guidance; every token drawn.
        ctx.forward_and_sample(st, &mut b, false, refine > 0, hook);
        hook.force(k, pn, &mut st.tokens[..n]);
        check_tokens(&st.tokens[..n], v)?;

        // Refinement: re-run this scale from the draft f_hat (f_hat plus the drafted tokens) and
        // draw again the tokens the policy picks; the rest are kept.
        for pass in 1..=refine {
            policy.select(k, steps, pass, &b.stats[..n], &mut b.resample[..n]);
            if !b.resample[..n].iter().any(|r| *r) {
                continue;
            }
            ctx.contribution(&st.tokens[..n], &mut b);
            for ((d, f), c) in b
                .draft
                .iter_mut()
                .zip(st.f_hat.iter())
                .zip(b.contrib.iter())
            {
                *d = *f + *c;
            }
            area_resize(b.draft, cv, p, pn, st.next_in);
            ctx.forward_and_sample(st, &mut b, true, true, hook);
            hook.force(k, pn, &mut st.tokens[..n]);
            check_tokens(&st.tokens[..n], v)?;
        }

        // 4. f_hat += Phi(bicubic(codebook[idx], P)); next input = area(f_hat, pn_next).
        ctx.contribution(&st.tokens[..n], &mut b);
        for (f, d) in st.f_hat.iter_mut().zip(b.contrib.iter()) {
            *f += *d;
        }
        hook.scale_done(k, &st.tokens[..n], st.f_hat);
        #[cfg(feature = "defmt")]
        defmt::info!(
            "srdd: scale {}/{} done ({}x{} tokens)",
            k + 1,
            steps,
            pn,
            pn
        );
        if k + 1 < steps {
            let pn2 = self.sched.pn[k + 1] as usize;
            area_resize(st.f_hat, cv, p, pn2, st.next_in);
        }
        self.k += 1;
        Ok(())
    }

    /// Runs every remaining scale.
    pub fn run(&mut self, hook: &mut dyn StepHook) -> Result<()> {
        while !self.finished() {
            self.step(hook)?;
        }
        Ok(())
    }

    /// Runs every remaining scale with `policy` choosing what refinement passes draw again.
    pub fn run_with(
        &mut self,
        hook: &mut dyn StepHook,
        policy: &mut dyn ResamplePolicy,
    ) -> Result<()> {
        while !self.finished() {
            self.step_with(hook, policy)?;
        }
        Ok(())
    }

    /// Decodes the finished `f_hat`, handing each image row (interleaved RGB in [−1, 1]) to `sink`.
    pub fn decode(&mut self, sink: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        if !self.finished() {
            return Err(Error::WrongState("decode before the last scale"));
        }
        let mut ar = Arena::new(&mut *self.scratch)?;
        vae::decode(
            &self.model.weights.decoder,
            &self.model.config,
            self.st.f_hat,
            &mut ar,
            true,
            self.opts.band_rows as usize,
            self.par,
            sink,
        )
    }
}

fn check_tokens(tokens: &[u32], v: usize) -> Result<()> {
    match tokens.iter().find(|&&x| x as usize >= v) {
        Some(&bad) => Err(Error::TokenOutOfRange {
            token: bad,
            vocab: v as u32,
        }),
        None => Ok(()),
    }
}

/// What one forward pass over a scale reads.
struct Ctx<'x> {
    model: &'x Model<'x>,
    par: &'x dyn Parallel,
    opts: &'x SampleOptions,
    sched: &'x Schedule,
    sizes: &'x Sizes,
    settings: StepSettings,
    k: usize,
}

impl Ctx<'_> {
    /// `b.contrib = Phi(bicubic(codebook[tokens], P))` of this step.
    fn contribution(&self, tokens: &[u32], b: &mut StepBufs<'_>) {
        let Sizes { cv, p, .. } = *self.sizes;
        let pn = self.sched.pn[self.k] as usize;
        scale_contribution(
            &self.model.weights.quant,
            self.model.config.vae.quant_resi,
            self.sched.phi[self.k] as usize,
            cv,
            tokens,
            pn,
            p,
            b.h,
            b.contrib,
            b.cscratch,
            self.par,
        );
    }

    /// The AdaLN vectors of every block and the head's scale/shift, for each CFG row.
    fn ada_vectors(&self, b: &mut StepBufs<'_>) {
        let Sizes { rows, c, depth, .. } = *self.sizes;
        let null = self.model.config.var.num_classes as usize;
        for r in 0..rows {
            let label = if r == 0 {
                self.opts.label as usize
            } else {
                null
            };
            ada_vectors(
                &self.model.weights.var,
                c,
                label,
                &mut b.ada[r * depth * 6 * c..(r + 1) * depth * 6 * c],
                &mut b.head_ada[r * 2 * c..(r + 1) * 2 * c],
                b.ada_tmp,
                &mut b.st.lin,
                self.par,
            );
        }
    }

    /// Builds step `k`'s input (the class token at step 0, else `word_embed(next_in)`), runs the
    /// blocks and the head, mixes guidance and draws tokens: every token, or with `only_flagged`
    /// those with `b.resample` set. With `stats`, records each drawn token's features.
    fn forward_and_sample(
        &self,
        st: &mut State<'_>,
        b: &mut StepBufs<'_>,
        only_flagged: bool,
        stats: bool,
        hook: &mut dyn StepHook,
    ) {
        let cfg = &self.model.config;
        let t = &self.model.weights.var;
        let Sizes {
            rows,
            n: nmax,
            c,
            v,
            cv,
            depth,
            chunk,
            ..
        } = *self.sizes;
        let k = self.k;
        let pn = self.sched.pn[k] as usize;
        let n = pn * pn;
        let level = self.sched.level[k] as usize;
        let pos0 = cfg.scale_begin(level);
        let heads = cfg.var.num_heads as usize;
        let eps = cfg.var.norm_eps;
        let tg = self.settings.guidance as f64;
        let causal = self.opts.attention == Attention::Causal;
        let run_rows = if rows == 2 && (causal || tg != 0.0) {
            2
        } else {
            1
        };
        let cache_begin: usize = (0..k).map(|j| self.sched.tokens(j)).sum();
        let lvl_pos =
            |tok: usize, i: usize| t.lvl_embed[level * c + i] + t.pos_1lc[(pos0 + tok) * c + i];
        let hidden = &mut *b.hidden;

        // 1. Input tokens.
        if k == 0 {
            let null = cfg.var.num_classes as usize;
            for r in 0..run_rows {
                let label = if r == 0 {
                    self.opts.label as usize
                } else {
                    null
                };
                let x = &mut hidden[r * nmax * c..];
                for tok in 0..n {
                    for i in 0..c {
                        x[tok * c + i] =
                            (t.class_emb[label * c + i] + t.pos_start[i]) + lvl_pos(tok, i);
                    }
                }
            }
        } else {
            for tok in 0..n {
                for ch in 0..cv {
                    b.win[tok * cv + ch] = st.next_in[ch * n + tok];
                }
            }
            linear(b.win, n, &t.word_embed, hidden, &mut b.st.lin, self.par);
            for tok in 0..n {
                for i in 0..c {
                    hidden[tok * c + i] += lvl_pos(tok, i);
                }
            }
            for r in 1..run_rows {
                hidden.copy_within(0..n * c, r * nmax * c);
            }
        }

        // 2. Blocks.
        for r in 0..run_rows {
            let x = &mut hidden[r * nmax * c..r * nmax * c + n * c];
            for (bi, blk) in t.blocks.iter().enumerate() {
                let ada = &b.ada[(r * depth + bi) * 6 * c..(r * depth + bi + 1) * 6 * c];
                let kv = if causal {
                    let len = self.sizes.cache * c;
                    let off = (bi * rows + r) * len;
                    Kv::Causal {
                        k: &mut st.kv_k[off..off + len],
                        v: &mut st.kv_v[off..off + len],
                        begin: cache_begin,
                    }
                } else {
                    Kv::Markov
                };
                block_forward(blk, c, heads, eps, ada, x, n, kv, &mut b.st, self.par);
            }
        }

        // 3. Head, guidance, sampling.
        let c1 = (1.0 + tg) as f32;
        let t32 = tg as f32;
        let s = &self.settings;
        let mut t0 = 0;
        while t0 < n {
            let m = chunk.min(n - t0);
            let xc = &hidden[t0 * c..(t0 + m) * c];
            head_logits(
                t,
                c,
                eps,
                &b.head_ada[..2 * c],
                xc,
                m,
                b.head_xn,
                b.logit_c,
                &mut b.st.lin,
                self.par,
            );
            if run_rows == 2 {
                let xu = &hidden[(nmax + t0) * c..(nmax + t0 + m) * c];
                head_logits(
                    t,
                    c,
                    eps,
                    &b.head_ada[2 * c..4 * c],
                    xu,
                    m,
                    b.head_xn,
                    b.logit_u,
                    &mut b.st.lin,
                    self.par,
                );
            }
            for j in 0..m {
                let tok = t0 + j;
                let lc = &mut b.logit_c[j * v..(j + 1) * v];
                hook.logits(k, tok, lc);
                if run_rows == 2 {
                    for (a, u) in lc.iter_mut().zip(&b.logit_u[j * v..(j + 1) * v]) {
                        *a = c1 * *a - t32 * *u;
                    }
                }
                hook.guided_logits(k, tok, lc);
                if only_flagged && !b.resample[tok] {
                    continue;
                }
                st.tokens[tok] =
                    sample_token(lc, s.top_k, s.top_p, s.temperature, &mut st.rng, b.samp);
                if stats {
                    b.stats[tok] = token_stats(lc, st.tokens[tok]);
                }
            }
            t0 += m;
        }
    }
}
