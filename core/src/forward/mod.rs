//! The forward seam: the compute of one scale step over R rows, behind one trait.
//!
//! The [`Sampler`](crate::generate::Sampler) owns everything that is sampling (the plan, guidance,
//! draws, hooks, refinement, the VQ bookkeeping of `f_hat`); a [`Forward`] backend owns the
//! compute: the transformer over one step's tokens and the VQVAE decoder. [`CpuForward`] is the
//! reference backend; a CUDA backend implements the same trait (`gpu/`).
//!
//! # Contract
//! A step is described by a [`Step`]: the step index and its `pn`, the scale's position in the
//! model's full schedule (`level`, for the level and position embeddings), where its tokens start
//! in the KV cache (`cache_begin`), the input, and the rows. One [`Row`] is one CFG branch of one
//! image: its class `label` (the null class for the unconditional branch), the `image` whose
//! input it reads, and its `slot`, the fixed index of its KV cache (block-causal only; a slot
//! keeps its cache across steps). The input is empty at step 0 (each row starts from its class
//! token: `class_emb[label] + pos_start + lvl_pos`); otherwise it holds, for every image, the
//! `Cvae × pn²` channel-major map `area(f_hat, pn)` at `image · input_stride`.
//!
//! For each step the sampler calls [`Forward::prepare`] once (AdaLN vectors of every row,
//! `word_embed` of the input plus the level and position embeddings, every block; block-causal
//! attention writes this scale's keys and values into each row's cache slot at `cache_begin`
//! and attends to `0 .. cache_begin + pn²`), then [`Forward::logits`] for consecutive token
//! ranges `t0 .. t0 + m` (`m ≤` the planned chunk), which writes `rows × m × V` raw logits
//! (row-major, before guidance and filtering). A refinement pass calls `prepare` again for the
//! same step with a new input and possibly fewer rows (only the images that draw again); it must
//! overwrite the cache entries of this step, not append. [`Forward::decode`] turns one image's
//! `f_hat` into image rows (`clamp(decoder(post_quant_conv(f_hat)), −1, 1)`, interleaved RGB,
//! top to bottom, each row once).
//!
//! Host memory: a backend that computes on the host gets its step and decoder scratch as the
//! `scratch` bytes of each call (the same bytes between a `prepare` and its `logits` calls; the
//! decoder's scratch overlays the step scratch, so the arena holds the larger of the two); a
//! device backend plans none and ignores them. Results of the int8 path are bit-identical across
//! instruction sets; f32 backends must keep the parity tolerances and every greedy token.
//!
//! A backend may report named intermediate tensors to a [`Probe`] so that two backends can be
//! compared op by op (as ggml's `test-backend-ops` does).

mod cpu;

pub use cpu::CpuForward;
pub(crate) use cpu::{CpuRun, CpuStep};

use crate::error::Result;

/// Most rows (CFG branches × images) one step may carry.
pub const MAX_ROWS: usize = 2 * MAX_BATCH;

/// Most images one batch may hold.
pub const MAX_BATCH: usize = 64;

/// One CFG branch of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Class label (`num_classes` is the null class of the unconditional branch).
    pub label: u32,
    /// Image whose input this row reads.
    pub image: u16,
    /// KV cache slot (block-causal); fixed for the row across steps.
    pub slot: u16,
}

/// One scale step as the backend sees it.
#[derive(Clone, Copy, Debug)]
pub struct Step<'x> {
    /// Step index in the schedule.
    pub k: usize,
    /// Tokens per side of this step (`pn² ` tokens).
    pub pn: usize,
    /// Index of this scale in the model's full schedule.
    pub level: usize,
    /// Tokens of the earlier steps (first KV cache position of this one).
    pub cache_begin: usize,
    /// The rows, in the order of the logits.
    pub rows: &'x [Row],
    /// Empty at step 0; else image `i`'s `Cvae × pn²` input at `i · input_stride`.
    pub input: &'x [f32],
    /// Floats between two images' inputs.
    pub input_stride: usize,
}

impl Step<'_> {
    /// Tokens of this step.
    pub fn tokens(&self) -> usize {
        self.pn * self.pn
    }
}

/// Names an intermediate tensor of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId {
    /// Operation: `"input"` (embedded tokens), `"block"` (a block's output), `"logits"`; with
    /// [`Probe::linear_inputs`] also `"qkv_in"` and `"fc1_in"` (a block's modulated LayerNorm
    /// feeding `mat_qkv` / `ffn.fc1`) and `"head_in"` (the one feeding `head`).
    pub op: &'static str,
    /// Block index (`"block"`, `"qkv_in"`, `"fc1_in"`), else 0.
    pub layer: usize,
    /// Row of the step.
    pub row: usize,
    /// First token the data covers.
    pub token: usize,
}

/// Receives intermediate tensors (`tokens × width` floats, row-major).
pub trait Probe {
    /// One tensor.
    fn tensor(&mut self, id: TensorId, data: &[f32]);
    /// Whether this probe keeps anything: a device backend skips the copies to the host when it
    /// does not.
    fn active(&self) -> bool {
        true
    }
    /// Whether this probe also wants the inputs of the AdaLN-modulated Linears (`"qkv_in"`,
    /// `"fc1_in"`, `"head_in"`; calibration of outlier smoothing). Off by default, so that an
    /// op-by-op comparison of two backends sees only the ops every backend reports.
    fn linear_inputs(&self) -> bool {
        false
    }
}

/// A probe that keeps nothing.
pub struct NoProbe;

impl Probe for NoProbe {
    fn tensor(&mut self, _: TensorId, _: &[f32]) {}
    fn active(&self) -> bool {
        false
    }
}

/// What a call may use on the host: its scratch bytes and the probe.
pub struct Io<'x> {
    /// Host scratch (the same bytes from a `prepare` to its `logits` calls); empty for a
    /// backend that plans none.
    pub scratch: &'x mut [u8],
    /// Receives intermediate tensors.
    pub probe: &'x mut dyn Probe,
}

/// A chunk of logits to fill: tokens `t0 .. t0 + m` of the step.
pub struct Chunk<'x> {
    /// First token.
    pub t0: usize,
    /// Tokens (at most the planned chunk).
    pub m: usize,
    /// `rows × m × V` raw logits, row-major in the order of the step's rows.
    pub out: &'x mut [f32],
}

/// The compute of a sampling run (see the [module docs](self) for the contract).
pub trait Forward {
    /// Most rows one step may carry (as planned).
    fn max_rows(&self) -> usize;

    /// Runs the transformer over the step's tokens for every row.
    fn prepare(&mut self, step: &Step<'_>, io: Io<'_>) -> Result<()>;

    /// Writes the raw logits of the chunk's tokens of every row (`rows × m × V`).
    fn logits(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> Result<()>;

    /// Decodes `f_hat` (`Cvae × P × P`), handing each image row to `sink`.
    fn decode(
        &mut self,
        f_hat: &[f32],
        scratch: &mut [u8],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()>;
}
