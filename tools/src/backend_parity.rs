//! `srdd-tools parity --backend cpu|cuda`: the CPU engine against another forward backend, op
//! by op (as ggml's `test-backend-ops` / `compare_graph_backend`).
//!
//! For each input (a fixture's packed checkpoints or a `.srdd` file) and each of a few
//! [`cases`] (attention, class, seed, guidance, batch size):
//!
//! 1. **Forced run.** The CPU sampler runs with a [`Recorder`] probe and records every step's
//!    tokens; the other backend then runs the same options with those tokens forced at every
//!    step ([`TokenHook`]), so both see the same inputs at every step, and with its own
//!    recorder. Every tensor the CPU reported (embedded input, each block's output, the logits;
//!    keyed by step, pass, op, layer and row) is compared by NMSE = Σ(a−b)²/Σa² against its
//!    bound ([`BOUNDS`], [`bound`]); the decoded images by PSNR. The table aggregates the max
//!    NMSE per (op, layer); the first tensor in execution order over its bound is named.
//! 2. **Free greedy run.** Both backends sample the same cases unforced with top-k 1; the
//!    report gives the share of identical tokens per step. On f32 weights every greedy token
//!    must be identical; on f16 and int8 weights the agreement is reported only.
//!
//! `--backend cpu` runs the CPU engine against a second CPU instance: every NMSE is exactly 0,
//! every image identical, every greedy token the same (the self-check of this comparison,
//! usable without a GPU).

use crate::parity::{pack_fixture, ParityError};
use serde_json::{json, Value};
use srdd_core::aligned::AlignedBytes;
use srdd_core::forward::{Probe, TensorId};
use srdd_core::generate::{Compute, Guidance, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::resample::{FixedFraction, ResamplePolicy};
use srdd_core::{Attention, Forward, Model, Schedule, WeightFormat};
use srdd_gpu::{CudaForward, DeviceModel, Gpu, GpuError};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The bounds a backend is held to against the CPU engine (from the CUDA backend's issue).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Max NMSE of every tensor of an f32 or f16-weight model, and of the element-wise tensors
    /// of an int8 model (the class-token input of step 0).
    pub float_nmse: f64,
    /// Max NMSE of the tensors downstream of an int8 matmul on an int8 model (the embedded
    /// input of steps after the first, block outputs, logits): activations are quantized on
    /// the fly, and a rounding flip there moves the output by one quantization step.
    pub int8_nmse: f64,
    /// Min PSNR (dB, images in [−1, 1] mapped to [0, 1]) of every decoded image.
    pub image_psnr_db: f64,
}

/// The bounds of `parity --backend`.
pub const BOUNDS: Bounds = Bounds {
    float_nmse: 1e-7,
    int8_nmse: 5e-4,
    image_psnr_db: 50.0,
};

/// The backend compared with the CPU engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A second CPU engine instance (every difference must be exactly 0).
    Cpu,
    /// The CUDA backend (`srdd-gpu`).
    Cuda,
}

impl Backend {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// Why a comparison could not run (each prints as one line).
#[derive(Debug, thiserror::Error)]
pub enum BackendParityError {
    /// Reading or packing a fixture.
    #[error("{0}")]
    Fixture(#[from] ParityError),
    /// Reading a model file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The CUDA backend (no driver, no device, a failed call).
    #[error("{0}")]
    Gpu(#[from] GpuError),
    /// The engine refused the run.
    #[error("engine: {0}")]
    Core(#[from] srdd_core::Error),
}

/// One sampling case run on both backends.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Short name for the report.
    pub name: &'static str,
    /// Attention policy (causal exercises the KV cache).
    pub attention: Attention,
    /// Class label.
    pub label: u32,
    /// Seed of the first image (image `i` uses `seed + i`).
    pub seed: u64,
    /// Guidance strength (0: the conditional branch alone).
    pub cfg: f32,
    /// Images sampled together.
    pub images: usize,
}

/// The cases every input runs: guided Markovian, a guided causal batch of two (KV cache
/// slots), and one unguided branch with the last class.
pub fn cases(model: &Model<'_>) -> Vec<Case> {
    let classes = model.config.var.num_classes.max(1);
    vec![
        Case {
            name: "markov cfg3",
            attention: Attention::Markov,
            label: 0,
            seed: 1,
            cfg: 3.0,
            images: 1,
        },
        Case {
            name: "causal cfg1.5 x2",
            attention: Attention::Causal,
            label: 1 % classes,
            seed: 2,
            cfg: 1.5,
            images: 2,
        },
        Case {
            name: "markov cfg0",
            attention: Attention::Markov,
            label: classes - 1,
            seed: 3,
            cfg: 0.0,
            images: 1,
        },
    ]
}

/// Where a reported tensor belongs: the step, the pass of that step (a refinement pass
/// reports the step again), and its id without the token (chunks of one tensor are joined).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TensorAt {
    /// Step index.
    pub k: usize,
    /// Pass of the step (0: the first draw).
    pub pass: usize,
    /// `"input"`, `"block"` or `"logits"` ([`TensorId::op`]).
    pub op: &'static str,
    /// Block index (`"block"`), else 0.
    pub layer: usize,
    /// Row of the step.
    pub row: usize,
}

/// A [`Probe`] that keeps every tensor, keyed by [`TensorAt`], in the order first reported.
#[derive(Default)]
pub struct Recorder {
    /// The step being run: the driver sets it before each step.
    pub step: usize,
    order: Vec<TensorAt>,
    /// Each tensor's chunks by first token.
    tensors: HashMap<TensorAt, BTreeMap<usize, Vec<f32>>>,
}

impl Recorder {
    /// The tensors in the order first reported (execution order).
    pub fn order(&self) -> &[TensorAt] {
        &self.order
    }

    /// A tensor's data, its chunks joined in token order.
    pub fn get(&self, at: &TensorAt) -> Option<Vec<f32>> {
        self.tensors
            .get(at)
            .map(|chunks| chunks.values().flatten().copied().collect())
    }
}

impl Probe for Recorder {
    fn tensor(&mut self, id: TensorId, data: &[f32]) {
        // A chunk whose token is already held for this key belongs to the next pass.
        let mut at = TensorAt {
            k: self.step,
            pass: 0,
            op: id.op,
            layer: id.layer,
            row: id.row,
        };
        loop {
            match self.tensors.get_mut(&at) {
                None => {
                    self.order.push(at);
                    self.tensors
                        .insert(at, BTreeMap::from([(id.token, data.to_vec())]));
                    return;
                }
                Some(chunks) if !chunks.contains_key(&id.token) => {
                    chunks.insert(id.token, data.to_vec());
                    return;
                }
                Some(_) => at.pass += 1,
            }
        }
    }
}

/// NMSE of `other` against `reference`: Σ(a−b)²/Σa² (0 when both are zero, infinite when only
/// the reference is, or when the lengths differ or a value is not finite).
pub fn nmse(reference: &[f32], other: &[f32]) -> f64 {
    if reference.len() != other.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(other) {
        let (a, b) = (*a as f64, *b as f64);
        num += (a - b) * (a - b);
        den += a * a;
    }
    if !num.is_finite() || !den.is_finite() {
        return f64::INFINITY;
    }
    if num == 0.0 {
        0.0
    } else if den == 0.0 {
        f64::INFINITY
    } else {
        num / den
    }
}

/// PSNR (dB) of two images in [−1, 1] mapped to [0, 1] (infinite when identical).
pub fn psnr_db(reference: &[f32], other: &[f32]) -> f64 {
    if reference.len() != other.len() {
        return f64::NEG_INFINITY;
    }
    let mse = reference
        .iter()
        .zip(other)
        .map(|(a, b)| ((*a as f64 - *b as f64) * 0.5).powi(2))
        .sum::<f64>()
        / reference.len().max(1) as f64;
    if mse.is_nan() {
        f64::NEG_INFINITY
    } else if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// The NMSE bound of a tensor of step `k` on a model with `weights`.
pub fn bound(weights: WeightFormat, op: &str, k: usize) -> f64 {
    match weights {
        WeightFormat::Int8 if !(op == "input" && k == 0) => BOUNDS.int8_nmse,
        _ => BOUNDS.float_nmse,
    }
}

/// The table label of a tensor: the input of step 0 (class token, element-wise) apart from the
/// later inputs (`word_embed`, a matmul).
fn label(at: &TensorAt) -> &'static str {
    match (at.op, at.k) {
        ("input", 0) => "input k=0",
        ("input", _) => "input k>0",
        (op, _) => op,
    }
}

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Compared {
    /// The case it belongs to.
    pub case: String,
    /// Where it was reported.
    pub at: TensorAt,
    /// NMSE against the CPU's (infinite when the backend did not report it).
    pub nmse: f64,
    /// Its bound.
    pub bound: f64,
    /// Whether the backend reported it at all.
    pub reported: bool,
}

impl Compared {
    /// Within its bound (a NaN never is).
    pub fn pass(&self) -> bool {
        self.reported && self.nmse <= self.bound
    }
}

/// Dataflow rank of an op within a step: the input, then the blocks by layer, then the logits.
fn op_rank(op: &str, layer: usize) -> (u8, usize) {
    match op {
        "input" => (0, 0),
        "block" => (1, layer),
        "logits" => (2, 0),
        _ => (3, 0),
    }
}

/// Compares every tensor the CPU reported with the other backend's, in execution order: by
/// step, pass, then dataflow (input, blocks by layer, logits), then row (so the first failure
/// is the earliest op, however a backend groups its rows).
pub fn compare(
    case: &str,
    cpu: &Recorder,
    other: &Recorder,
    weights: WeightFormat,
) -> Vec<Compared> {
    let mut order = cpu.order().to_vec();
    order.sort_by_key(|at| (at.k, at.pass, op_rank(at.op, at.layer), at.row));
    order
        .iter()
        .map(|at| {
            let a = cpu.get(at).unwrap_or_default();
            let b = other.get(at);
            Compared {
                case: case.to_string(),
                at: *at,
                nmse: b.as_ref().map_or(f64::INFINITY, |b| nmse(&a, b)),
                bound: bound(weights, at.op, at.k),
                reported: b.is_some(),
            }
        })
        .collect()
}

/// The first compared tensor (in execution order) over its bound.
pub fn first_exceeding(compared: &[Compared]) -> Option<&Compared> {
    compared.iter().find(|c| !c.pass())
}

/// One line of the per-op table.
#[derive(Clone, Debug)]
pub struct OpRow {
    /// `input k=0`, `input k>0`, `block`, `logits`.
    pub op: &'static str,
    /// Block index for `block`.
    pub layer: Option<usize>,
    /// Tensors compared (rows × steps × passes × cases).
    pub tensors: usize,
    /// Largest NMSE.
    pub max_nmse: f64,
    /// Bound.
    pub bound: f64,
    /// Every tensor within its bound.
    pub pass: bool,
}

/// Aggregates per (op, layer), in order of first execution.
pub fn op_table(compared: &[Compared]) -> Vec<OpRow> {
    let mut rows: Vec<OpRow> = Vec::new();
    for c in compared {
        let op = label(&c.at);
        let layer = (c.at.op == "block").then_some(c.at.layer);
        let i = match rows.iter().position(|r| r.op == op && r.layer == layer) {
            Some(i) => i,
            None => {
                rows.push(OpRow {
                    op,
                    layer,
                    tensors: 0,
                    max_nmse: 0.0,
                    bound: c.bound,
                    pass: true,
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[i];
        r.tensors += 1;
        // NaN-safe: an unreported or non-finite tensor counts as infinite.
        let v = if c.nmse.is_nan() || !c.reported {
            f64::INFINITY
        } else {
            c.nmse
        };
        r.max_nmse = r.max_nmse.max(v);
        r.bound = r.bound.max(c.bound);
        r.pass &= c.pass();
    }
    // Inputs (step 0 first), blocks by layer, logits.
    rows.sort_by_key(|r| {
        let op = r.op.split(' ').next().unwrap_or("");
        (op_rank(op, r.layer.unwrap_or(0)), r.op != "input k=0")
    });
    rows
}

/// The comparison of one input.
#[derive(Clone, Debug)]
pub struct InputReport {
    /// The fixture directory or model file.
    pub input: String,
    /// Its weight format.
    pub weights: WeightFormat,
    /// The cases run.
    pub cases: Vec<String>,
    /// The per-op table.
    pub ops: Vec<OpRow>,
    /// The first tensor over its bound, in execution order.
    pub first_exceeding: Option<Compared>,
    /// Images compared.
    pub images: usize,
    /// Lowest PSNR of the decoded images (dB; infinite when all identical).
    pub image_psnr_db: f64,
    /// Greedy runs: identical tokens and tokens per step.
    pub greedy_steps: Vec<(usize, usize)>,
    /// Whether every greedy token must be identical (f32 weights).
    pub greedy_required: bool,
}

impl InputReport {
    /// Every image at or above the PSNR bound.
    pub fn images_pass(&self) -> bool {
        self.image_psnr_db >= BOUNDS.image_psnr_db
    }

    /// Greedy tokens identical over all steps and cases.
    pub fn greedy_agreement(&self) -> (usize, usize) {
        self.greedy_steps
            .iter()
            .fold((0, 0), |(a, t), (x, y)| (a + x, t + y))
    }

    /// Greedy requirement met (always, where it only reports).
    pub fn greedy_pass(&self) -> bool {
        let (a, t) = self.greedy_agreement();
        !self.greedy_required || a == t
    }

    /// Every bound met.
    pub fn pass(&self) -> bool {
        self.first_exceeding.is_none()
            && self.ops.iter().all(|o| o.pass)
            && self.images_pass()
            && self.greedy_pass()
    }
}

/// What one sampling run produced.
struct Outcome {
    /// Per image, per step, its tokens.
    tokens: Vec<Vec<Vec<u32>>>,
    /// Per image, its decoded rows (interleaved RGB, [−1, 1]).
    images: Vec<Vec<f32>>,
}

/// Records each step's tokens (after forcing) and, when given, forces them first.
pub struct TokenHook {
    /// Tokens to force, per step.
    pub forced: Option<Vec<Vec<u32>>>,
    /// The tokens each step ended with.
    pub seen: Vec<Vec<u32>>,
}

impl StepHook for TokenHook {
    fn force(&mut self, k: usize, _pn: usize, tokens: &mut [u32]) {
        if let Some(f) = self.forced.as_ref().and_then(|f| f.get(k)) {
            if f.len() == tokens.len() {
                tokens.copy_from_slice(f);
            }
        }
        if self.seen.len() <= k {
            self.seen.resize(k + 1, Vec::new());
        }
        self.seen[k] = tokens.to_vec();
    }
}

/// Runs every step of `s` and decodes every image.
fn drive<F: Forward>(
    s: &mut Sampler<'_, '_, F>,
    forced: Option<&[Vec<Vec<u32>>]>,
    mut probe: Option<&mut Recorder>,
) -> srdd_core::Result<Outcome> {
    let images = s.images();
    let mut hooks: Vec<TokenHook> = (0..images)
        .map(|i| TokenHook {
            forced: forced.map(|f| f[i].clone()),
            seen: Vec::new(),
        })
        .collect();
    // Refinement is off in every case; the policy is never asked.
    let mut policies: Vec<FixedFraction> = (0..images)
        .map(|_| FixedFraction { fraction: 0.0 })
        .collect();
    while !s.finished() {
        let mut h: Vec<&mut dyn StepHook> =
            hooks.iter_mut().map(|h| h as &mut dyn StepHook).collect();
        let mut p: Vec<&mut dyn ResamplePolicy> = policies
            .iter_mut()
            .map(|p| p as &mut dyn ResamplePolicy)
            .collect();
        match probe.as_deref_mut() {
            Some(r) => {
                r.step = s.steps_done();
                s.step_probed(&mut h, &mut p, r)?;
            }
            None => s.step(&mut h, &mut p)?,
        }
    }
    let mut out = Vec::with_capacity(images);
    for i in 0..images {
        let mut img: Vec<(usize, Vec<f32>)> = Vec::new();
        s.decode(i, &mut |y, row| img.push((y, row.to_vec())))?;
        img.sort_by_key(|r| r.0);
        out.push(img.into_iter().flat_map(|r| r.1).collect());
    }
    Ok(Outcome {
        tokens: hooks.into_iter().map(|h| h.seen).collect(),
        images: out,
    })
}

/// The backend under test, ready for runs on one model.
enum Other<'d> {
    Cpu,
    Cuda(&'d DeviceModel<'d>),
}

/// Runs one case on the CPU engine.
fn run_cpu<'m>(
    model: &'m Model<'m>,
    opts: SampleOptions,
    sched: &Schedule,
    images: usize,
    forced: Option<&[Vec<Vec<u32>>]>,
    probe: Option<&mut Recorder>,
    par: &'m dyn Parallel,
) -> Result<Outcome, BackendParityError> {
    let plan = Plan::batch(&model.config, &opts, sched, images, Compute::Cpu)?;
    let mut ab = AlignedBytes::zeroed(plan.arena_bytes());
    let mut s = Sampler::cpu(model, opts, sched.clone(), images, ab.as_bytes_mut(), par)?;
    Ok(drive(&mut s, forced, probe)?)
}

/// Runs one case on the backend under test.
#[allow(clippy::too_many_arguments)]
fn run_other<'m>(
    other: &Other<'m>,
    model: &'m Model<'m>,
    opts: SampleOptions,
    sched: &Schedule,
    images: usize,
    forced: Option<&[Vec<Vec<u32>>]>,
    probe: Option<&mut Recorder>,
    par: &'m dyn Parallel,
) -> Result<Outcome, BackendParityError> {
    match other {
        Other::Cpu => run_cpu(model, opts, sched, images, forced, probe, par),
        Other::Cuda(dm) => {
            let fwd = CudaForward::new(dm, &opts, sched, images)?;
            let plan = Plan::batch(&model.config, &opts, sched, images, Compute::Device)?;
            let mut ab = AlignedBytes::zeroed(plan.arena_bytes());
            let mut s = Sampler::with_forward(
                model,
                opts,
                sched.clone(),
                images,
                ab.as_bytes_mut(),
                fwd,
                par,
            )?;
            // A backend failure reaches the sampler as `Error::Backend`; the CUDA error behind it
            // says more.
            drive(&mut s, forced, probe).map_err(|e| match s.forward().last_error() {
                Some(g) => BackendParityError::Gpu(g.clone()),
                None => BackendParityError::Core(e),
            })
        }
    }
}

/// Options of a case (`greedy`: top-k 1; else top-k 40 at temperature 1, which the forced run
/// makes irrelevant to the other backend).
fn options(model: &Model<'_>, c: &Case, greedy: bool) -> SampleOptions {
    let vocab = model.config.vae.vocab_size;
    SampleOptions {
        cfg: c.cfg,
        guidance: if c.cfg == 0.0 {
            Guidance::Off
        } else {
            Guidance::Linear
        },
        top_k: if greedy { 1 } else { 40.min(vocab) },
        top_p: 0.0,
        temperature: 1.0,
        seed: c.seed,
        attention: c.attention,
        refine: 0,
        ..SampleOptions::new(c.label)
    }
}

/// Compares the CPU engine with `backend` on `model` (named `input` in the report). `gpu` is
/// needed for [`Backend::Cuda`].
pub fn compare_model(
    input: &str,
    model: &Model<'_>,
    backend: Backend,
    gpu: Option<&Gpu>,
    par: &dyn Parallel,
) -> Result<InputReport, BackendParityError> {
    let dm;
    let other = match (backend, gpu) {
        (Backend::Cpu, _) => Other::Cpu,
        (Backend::Cuda, Some(gpu)) => {
            dm = DeviceModel::upload(gpu, model)?;
            Other::Cuda(&dm)
        }
        (Backend::Cuda, None) => return Err(GpuError::NoDevice.into()),
    };
    let sched = Schedule::full(&model.config);
    let steps = sched.len();
    let weights = model.config.weights;
    let mut compared = Vec::new();
    let mut psnr = f64::INFINITY;
    let mut images = 0;
    let mut greedy = vec![(0usize, 0usize); steps];
    let list = cases(model);
    for c in &list {
        // Forced run: the CPU's tokens at every step of the other backend.
        let opts = options(model, c, false);
        let mut cpu_rec = Recorder::default();
        let cpu = run_cpu(model, opts, &sched, c.images, None, Some(&mut cpu_rec), par)?;
        let mut other_rec = Recorder::default();
        let got = run_other(
            &other,
            model,
            opts,
            &sched,
            c.images,
            Some(&cpu.tokens),
            Some(&mut other_rec),
            par,
        )?;
        compared.extend(compare(c.name, &cpu_rec, &other_rec, weights));
        for (a, b) in cpu.images.iter().zip(&got.images) {
            psnr = psnr.min(psnr_db(a, b));
            images += 1;
        }
        // Free greedy run, no probe (a device backend skips its copies).
        let opts = options(model, c, true);
        let a = run_cpu(model, opts, &sched, c.images, None, None, par)?;
        let b = run_other(&other, model, opts, &sched, c.images, None, None, par)?;
        for (ta, tb) in a.tokens.iter().zip(&b.tokens) {
            for (k, (sa, sb)) in ta.iter().zip(tb).enumerate() {
                greedy[k].0 += sa.iter().zip(sb).filter(|(x, y)| x == y).count();
                greedy[k].1 += sa.len().max(sb.len());
            }
        }
    }
    Ok(InputReport {
        input: input.to_string(),
        weights,
        cases: list.iter().map(|c| c.name.to_string()).collect(),
        ops: op_table(&compared),
        first_exceeding: first_exceeding(&compared).cloned(),
        images,
        image_psnr_db: psnr,
        greedy_steps: greedy,
        greedy_required: weights == WeightFormat::F32,
    })
}

/// Packs the fixture in `dir` with `weights` and compares it.
pub fn compare_fixture(
    dir: &Path,
    weights: WeightFormat,
    backend: Backend,
    gpu: Option<&Gpu>,
    par: &dyn Parallel,
) -> Result<InputReport, BackendParityError> {
    let bytes = AlignedBytes::new(&pack_fixture(dir, weights)?);
    let model = Model::from_bytes(bytes.as_bytes())?;
    compare_model(&dir.display().to_string(), &model, backend, gpu, par)
}

/// Reads the `.srdd` file `path` and compares it.
pub fn compare_file(
    path: &Path,
    backend: Backend,
    gpu: Option<&Gpu>,
    par: &dyn Parallel,
) -> Result<InputReport, BackendParityError> {
    let bytes = AlignedBytes::read(path)
        .map_err(|e| BackendParityError::Io(path.display().to_string(), e))?;
    let model = Model::from_bytes(bytes.as_bytes())?;
    compare_model(&path.display().to_string(), &model, backend, gpu, par)
}

fn format_name(w: WeightFormat) -> &'static str {
    match w {
        WeightFormat::F32 => "f32",
        WeightFormat::F16 => "f16",
        WeightFormat::Int8 => "int8",
    }
}

fn where_text(c: &Compared) -> String {
    let layer = if c.at.op == "block" {
        format!(" {}", c.at.layer)
    } else {
        String::new()
    };
    let what = if c.reported {
        format!("NMSE {:.3e} > {:.0e}", c.nmse, c.bound)
    } else {
        "not reported by the backend".to_string()
    };
    format!(
        "{}{layer} (case {}, step {}, pass {}, row {}): {what}",
        c.at.op, c.case, c.at.k, c.at.pass, c.at.row
    )
}

fn pct(a: usize, t: usize) -> f64 {
    if t == 0 {
        100.0
    } else {
        100.0 * a as f64 / t as f64
    }
}

/// The report as text: per input, the per-op table, the images, the greedy agreement and the
/// first op over its bound; then a summary line.
pub fn text(backend: Backend, reports: &[InputReport]) -> String {
    let mut s = String::new();
    for r in reports {
        s += &format!(
            "{} ({} weights; cpu vs {}; cases: {})\n",
            r.input,
            format_name(r.weights),
            backend.name(),
            r.cases.join(", ")
        );
        s += &format!(
            "  {:<10} {:>5} {:>8} {:>11} {:>8}  result\n",
            "op", "layer", "tensors", "max NMSE", "bound"
        );
        for o in &r.ops {
            s += &format!(
                "  {:<10} {:>5} {:>8} {:>11.3e} {:>8.0e}  {}\n",
                o.op,
                o.layer.map_or("-".to_string(), |l| l.to_string()),
                o.tensors,
                o.max_nmse,
                o.bound,
                if o.pass { "pass" } else { "FAIL" }
            );
        }
        s += &format!(
            "  {:<10} {:>5} {:>8} {:>8.1} dB {:>5} dB  {}\n",
            "image",
            "-",
            r.images,
            r.image_psnr_db,
            format!(">={}", BOUNDS.image_psnr_db),
            if r.images_pass() { "pass" } else { "FAIL" }
        );
        let (a, t) = r.greedy_agreement();
        let steps: Vec<String> = r
            .greedy_steps
            .iter()
            .map(|(a, t)| format!("{:.0}", pct(*a, *t)))
            .collect();
        s += &format!(
            "  greedy tokens identical: {:.2}% ({a}/{t}); per step % [{}]; {}\n",
            pct(a, t),
            steps.join(" "),
            if r.greedy_required {
                if r.greedy_pass() {
                    "required on f32: pass"
                } else {
                    "required on f32: FAIL"
                }
            } else {
                "reported only (not f32 weights)"
            }
        );
        s += &format!(
            "  first op over its bound: {}\n",
            r.first_exceeding
                .as_ref()
                .map_or("none".to_string(), where_text)
        );
    }
    let failed = reports.iter().filter(|r| !r.pass()).count();
    s += &format!(
        "{} inputs: {} within bounds, {} failed",
        reports.len(),
        reports.len() - failed,
        failed
    );
    s
}

/// A float for JSON: `null` when not finite (an infinite PSNR: identical images; an infinite
/// NMSE: a tensor missing or not finite).
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// The report as JSON: `{backend, pass, bounds, inputs: [{input, weights, cases, pass, ops:
/// [{op, layer, tensors, max_nmse, bound, pass}], first_exceeding, images, greedy}]}`; a
/// non-finite number is `null` (`image.min_psnr_db` null: identical images).
pub fn json(backend: Backend, reports: &[InputReport]) -> Value {
    let inputs: Vec<Value> = reports
        .iter()
        .map(|r| {
            let (a, t) = r.greedy_agreement();
            json!({
                "input": r.input,
                "weights": format_name(r.weights),
                "cases": r.cases,
                "pass": r.pass(),
                "ops": r.ops.iter().map(|o| json!({
                    "op": o.op,
                    "layer": o.layer,
                    "tensors": o.tensors,
                    "max_nmse": finite(o.max_nmse),
                    "bound": o.bound,
                    "pass": o.pass,
                })).collect::<Vec<_>>(),
                "first_exceeding": r.first_exceeding.as_ref().map(|c| json!({
                    "op": c.at.op,
                    "layer": c.at.layer,
                    "case": c.case,
                    "step": c.at.k,
                    "pass": c.at.pass,
                    "row": c.at.row,
                    "nmse": finite(c.nmse),
                    "bound": c.bound,
                    "reported": c.reported,
                })),
                "image": {
                    "count": r.images,
                    "min_psnr_db": finite(r.image_psnr_db),
                    "bound_db": BOUNDS.image_psnr_db,
                    "pass": r.images_pass(),
                },
                "greedy": {
                    "identical": a,
                    "tokens": t,
                    "per_step": r.greedy_steps.iter().map(|(a, t)| json!({"identical": a, "tokens": t})).collect::<Vec<_>>(),
                    "required": r.greedy_required,
                    "pass": r.greedy_pass(),
                },
            })
        })
        .collect();
    json!({
        "backend": backend.name(),
        "pass": reports.iter().all(InputReport::pass),
        "bounds": {
            "float_nmse": BOUNDS.float_nmse,
            "int8_nmse": BOUNDS.int8_nmse,
            "image_psnr_db": BOUNDS.image_psnr_db,
        },
        "inputs": inputs,
    })
}
