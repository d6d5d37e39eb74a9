//! The parity runner: packs a fixture's official checkpoints (both `.pth` and `.safetensors`),
//! runs every case of its `manifest.json` through the engine and compares against
//! `reference.safetensors` with the manifest's tolerances.
//!
//! Case kinds (manifest `cases_doc`): `tokenize`, `decode`, `teacher_forced`, `sample`, `edit`.
//! An expected key's meaning follows from its case kind and name: `…_{si}` keys are per step
//! (`idx` tokens, `fhat` latents, `force` edit masks); other keys are the case's image, latent or
//! logits. In int8 mode the same cases report quantization error instead of exact agreement,
//! checked against the bounds in [`Int8Bounds`] (documented in docs/QUANTIZATION.md).

use crate::checkpoint::{read_state_dict, Role, StateDict};
use crate::convert::{pack, KeepRule, PackOptions};
use serde_json::Value;
use srdd_core::aligned::AlignedBytes;
use srdd_core::edit::EditHook;
use srdd_core::generate::{Both, Generator, Guidance, Plan, SampleOptions, StepHook};
use srdd_core::parallel::{Parallel, Sequential};
use srdd_core::tokenize::{tokenize, tokenize_bytes};
use srdd_core::{vae, Attention, Model, Schedule, WeightFormat};
use std::collections::HashMap;
use std::path::Path;

/// Errors that stop a fixture before its cases run.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// IO.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Manifest problems.
    #[error("manifest: {0}")]
    Manifest(String),
    /// Reference tensors.
    #[error("reference.safetensors: {0}")]
    Reference(String),
    /// Conversion.
    #[error("pack {0}: {1}")]
    Convert(String, crate::convert::ConvertError),
    /// Checkpoint reading.
    #[error("{0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// Engine.
    #[error("engine: {0}")]
    Core(#[from] srdd_core::Error),
}

/// Bounds the int8 path must meet on the parity fixtures (per case kind).
#[derive(Clone, Copy, Debug)]
pub struct Int8Bounds {
    /// Teacher forcing: minimum fraction of positions whose top-1 token equals the reference's.
    pub teacher_top1_min: f64,
    /// Teacher forcing: minimum of that fraction over the scales (0 = not bounded).
    pub teacher_scale_top1_min: f64,
    /// Teacher forcing: maximum mean KL divergence (reference ‖ int8), nats per position.
    pub teacher_kld_max: f64,
    /// Decode / reconstruction: minimum PSNR (dB, images in [−1, 1] mapped to [0, 1]).
    pub image_psnr_min: f64,
    /// Sampling and editing, run with the reference's tokens forced: minimum fraction of tokens
    /// whose guided argmax equals the reference token.
    pub sample_forced_top1_min: f64,
}

/// The bounds of plain int8 (every Linear/Conv weight int8): a regression guard on the int8
/// kernels and quantization, whose near-tie flips the precision plan exists to remove.
pub const INT8_BOUNDS: Int8Bounds = Int8Bounds {
    teacher_top1_min: 0.95,
    teacher_scale_top1_min: 0.0,
    teacher_kld_max: 0.005,
    image_psnr_min: 38.0,
    sample_forced_top1_min: 0.92,
};

/// The raised bounds of an int8 pack with a precision plan (issue #12): top-1 ≥ 99 % and ≥ 98 %
/// at every scale, mean KL ≤ 1e-3, decoder PSNR ≥ 40 dB, forced-token agreement ≥ 98 %.
pub const PLAN_BOUNDS: Int8Bounds = Int8Bounds {
    teacher_top1_min: 0.99,
    teacher_scale_top1_min: 0.98,
    teacher_kld_max: 0.001,
    image_psnr_min: 40.0,
    sample_forced_top1_min: 0.98,
};

/// The precision plan the parity fixtures run with [`PLAN_BOUNDS`]: every Linear weight of the
/// transformer (blocks, input embedding, head and its AdaLN) in f16, the VQVAE int8. It is where
/// the automatic plan (`pack --max-growth`) ends when its targets are not met earlier (on the
/// built-in model at ≥ 35 % growth); calibrated plans that stop earlier meet the targets on
/// their calibration images but not on every fixture case (docs/QUANTIZATION.md).
pub fn transformer_plan() -> Vec<KeepRule> {
    ["word_embed.weight", "blocks.*", "head_nm.*", "head.weight"]
        .iter()
        .map(|p| KeepRule {
            pattern: p.to_string(),
            format: WeightFormat::F16,
            act16: false,
        })
        .collect()
}

/// One result row.
#[derive(Clone, Debug)]
pub struct Row {
    /// Case id.
    pub id: String,
    /// What was measured.
    pub metric: String,
    /// The bound it was held to.
    pub tolerance: String,
    /// Pass or fail.
    pub pass: bool,
}

struct Reference {
    bytes: Vec<u8>,
}

enum Tensor {
    F(Vec<f32>),
    I(Vec<i64>),
}

impl Reference {
    fn get(&self, key: &str) -> Result<(Tensor, Vec<usize>), ParityError> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes)
            .map_err(|e| ParityError::Reference(e.to_string()))?;
        let t = st
            .tensor(key)
            .map_err(|_| ParityError::Reference(format!("no tensor {key}")))?;
        let shape = t.shape().to_vec();
        let d = t.data();
        use safetensors::Dtype;
        let v = match t.dtype() {
            Dtype::F32 => Tensor::F(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::I64 => Tensor::I(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::I32 => Tensor::I(
                d.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            Dtype::U8 | Dtype::BOOL => Tensor::I(d.iter().map(|&b| b as i64).collect()),
            other => {
                return Err(ParityError::Reference(format!(
                    "{key}: unsupported dtype {other:?}"
                )))
            }
        };
        Ok((v, shape))
    }
    fn floats(&self, key: &str) -> Result<Vec<f32>, ParityError> {
        match self.get(key)?.0 {
            Tensor::F(v) => Ok(v),
            Tensor::I(v) => Ok(v.into_iter().map(|x| x as f32).collect()),
        }
    }
    fn ints(&self, key: &str) -> Result<Vec<i64>, ParityError> {
        match self.get(key)?.0 {
            Tensor::I(v) => Ok(v),
            Tensor::F(_) => Err(ParityError::Reference(format!("{key}: expected integers"))),
        }
    }
}

/// What a case produced, by expected key.
enum Got {
    F(Vec<f32>),
    I(Vec<i64>),
}

struct Expect {
    key: String,
    exact: bool,
    atol: f64,
    rtol: f64,
}

fn expects(case: &Value) -> Vec<Expect> {
    case["expect"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Expect {
                    key: e["key"].as_str().unwrap_or("").to_string(),
                    exact: e["exact"].as_bool().unwrap_or(false),
                    atol: e["atol"].as_f64().unwrap_or(0.0),
                    rtol: e["rtol"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn per_step(key: &str, steps: usize) -> Vec<String> {
    if key.contains("{si}") {
        (0..steps)
            .map(|s| key.replace("{si}", &s.to_string()))
            .collect()
    } else {
        vec![key.to_string()]
    }
}

fn psnr01(a: &[f32], b: &[f32], range: f64) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64 / range).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// How one expected key compared (aggregated over its steps).
#[derive(Default)]
struct Agg {
    max_abs: Option<f64>,
    bad: usize,
    total: usize,
    note: Option<String>,
}

/// Compares one produced tensor with the reference in f32 mode, folding into `agg`; returns pass.
fn compare_exact(e: &Expect, got: &Got, want: &Tensor, agg: &mut Agg) -> bool {
    let (pass, m) = compare_one(e, got, want);
    match m {
        Metric::Abs(d) => agg.max_abs = Some(agg.max_abs.map_or(d, |x: f64| x.max(d))),
        Metric::Count(b, t) => {
            agg.bad += b;
            agg.total += t;
        }
        Metric::Note(n) => agg.note = Some(n),
    }
    pass
}

enum Metric {
    Abs(f64),
    Count(usize, usize),
    Note(String),
}

fn compare_one(e: &Expect, got: &Got, want: &Tensor) -> (bool, Metric) {
    match (got, want) {
        (Got::I(g), Tensor::I(w)) => {
            if g.len() != w.len() {
                return (
                    false,
                    Metric::Note(format!("length {} vs {}", g.len(), w.len())),
                );
            }
            let bad = g.iter().zip(w).filter(|(a, b)| a != b).count();
            (bad == 0, Metric::Count(bad, g.len()))
        }
        (Got::F(g), Tensor::F(w)) => {
            if g.len() != w.len() {
                return (
                    false,
                    Metric::Note(format!("length {} vs {}", g.len(), w.len())),
                );
            }
            let mut max_abs = 0f64;
            let mut worst = 0f64;
            let mut nan = false;
            for (a, b) in g.iter().zip(w) {
                let d = (*a as f64 - *b as f64).abs();
                if d.is_nan() {
                    nan = true;
                }
                max_abs = max_abs.max(d);
                worst = worst.max(d / (e.atol + e.rtol * (*b as f64).abs()).max(f64::MIN_POSITIVE));
            }
            let pass = !nan
                && if e.exact {
                    max_abs == 0.0
                } else {
                    worst <= 1.0
                };
            (pass, Metric::Abs(max_abs))
        }
        (Got::F(g), Tensor::I(w)) => {
            let bad = g.iter().zip(w).filter(|(a, b)| **a as i64 != **b).count();
            (bad == 0 && g.len() == w.len(), Metric::Count(bad, w.len()))
        }
        (Got::I(_), Tensor::F(_)) => (
            false,
            Metric::Note("integer output vs float reference".into()),
        ),
    }
}

struct Capture {
    /// Argmax of the guided logits of every token (int8 agreement runs).
    argmax: Vec<u32>,
    tokens: Vec<Vec<u32>>,
    fhat: Vec<Vec<f32>>,
    logits: Vec<f32>,
    vocab: usize,
    begins: Vec<usize>,
    forced: Option<Vec<u32>>,
    offset: usize,
}

impl StepHook for Capture {
    fn guided_logits(&mut self, _k: usize, _t: usize, l: &[f32]) {
        self.argmax.push(srdd_core::sample::argmax(l));
    }
    fn logits(&mut self, k: usize, t: usize, cond: &[f32]) {
        if !self.begins.is_empty() {
            let at = (self.begins[k] + t) * self.vocab;
            self.logits[at..at + self.vocab].copy_from_slice(cond);
        }
    }
    fn force(&mut self, _k: usize, pn: usize, tokens: &mut [u32]) {
        if let Some(f) = &self.forced {
            tokens.copy_from_slice(&f[self.offset..self.offset + pn * pn]);
        }
        self.offset += pn * pn;
    }
    fn scale_done(&mut self, _k: usize, tokens: &[u32], f_hat: &[f32]) {
        self.tokens.push(tokens.to_vec());
        self.fhat.push(f_hat.to_vec());
    }
}

/// What a fixture's int8 (or f16) pack keeps beyond its weight format: a precision plan
/// (`--keep` rules; the run is then held to [`PLAN_BOUNDS`]) and AdaLN tables (`--ada-table`).
#[derive(Clone, Debug, Default)]
pub struct FixturePlan {
    /// Weights kept in f16/f32 (`pack --keep`).
    pub keep: Vec<KeepRule>,
    /// AdaLN Linears stored as per-label tables in this format (`pack --ada-table`).
    pub ada_tables: Option<WeightFormat>,
}

impl FixturePlan {
    /// Keep rules only.
    pub fn keep(keep: Vec<KeepRule>) -> FixturePlan {
        FixturePlan {
            keep,
            ada_tables: None,
        }
    }
}

/// How a fixture's checkpoints are packed: its manifest's schedule and VQVAE settings,
/// Markovian attention, with the encoder.
fn pack_options(
    manifest: &Value,
    weights: WeightFormat,
    plan: &FixturePlan,
) -> Result<PackOptions, ParityError> {
    let config = &manifest["config"];
    let patch_nums: Vec<u16> = config["patch_nums"]
        .as_array()
        .ok_or_else(|| ParityError::Manifest("config.patch_nums missing".into()))?
        .iter()
        .map(|v| v.as_u64().unwrap_or(0) as u16)
        .collect();
    Ok(PackOptions {
        weights,
        patch_nums: Some(patch_nums),
        attention: Attention::Markov,
        encoder: true,
        quant_resi: config["vqvae"]["quant_resi"].as_f64().unwrap_or(0.5) as f32,
        gn_groups: config["vqvae"]["groupnorm_groups"].as_u64().unwrap_or(32) as u32,
        metadata: Vec::new(),
        keep: plan.keep.clone(),
        smooth: None,
        fake_quant: false,
        ada_tables: plan.ada_tables,
    })
}

/// The fixture in `dir`: its pack options for `weights` and its checkpoints (`var.pth`/`vae.pth`,
/// else the `.safetensors` pair), with the extension used.
fn fixture_inputs(
    dir: &Path,
    weights: WeightFormat,
) -> Result<(PackOptions, StateDict, StateDict, &'static str), ParityError> {
    let path = |name: &str| dir.join(name);
    let manifest_path = path("manifest.json");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .map_err(|e| ParityError::Io(manifest_path.display().to_string(), e))?,
    )
    .map_err(|e| ParityError::Manifest(e.to_string()))?;
    let opts = pack_options(&manifest, weights, &FixturePlan::default())?;
    let ext = if path("var.pth").is_file() {
        "pth"
    } else {
        "safetensors"
    };
    let var = read_state_dict(&path(&format!("var.{ext}")), Role::Var)?;
    let vae = read_state_dict(&path(&format!("vae.{ext}")), Role::Vae)?;
    Ok((opts, var, vae, ext))
}

/// Packs the fixture in `dir` (its `var.pth`/`vae.pth`, else the `.safetensors` pair) as
/// [`run_fixture`] does, returning the `.srdd` bytes.
pub fn pack_fixture(dir: &Path, weights: WeightFormat) -> Result<Vec<u8>, ParityError> {
    let (opts, var, vae, ext) = fixture_inputs(dir, weights)?;
    pack(&var, &vae, &opts).map_err(|e| ParityError::Convert(ext.into(), e))
}

/// The automatic precision plan of the fixture in `dir` packed as int8 ([`pack_fixture`]'s
/// options): the keep rules (exact names) to add to those options.
pub fn auto_plan_fixture(
    dir: &Path,
    auto: &crate::plan::AutoPlanOptions,
) -> Result<Vec<crate::convert::KeepRule>, crate::plan::PlanError> {
    let (opts, var, vae, _) = fixture_inputs(dir, WeightFormat::Int8)?;
    Ok(crate::plan::auto_plan(&var, &vae, &opts, auto)?.keep)
}

/// Runs every case of the fixture in `dir`; returns one row per case (plus the packing check).
pub fn run_fixture(dir: &Path, weights: WeightFormat) -> Result<Vec<Row>, ParityError> {
    run_fixture_on(dir, weights, &FixturePlan::default(), &Sequential)
}

/// [`run_fixture`] with a precision plan and AdaLN tables (int8 and f16 packs) and the kernels
/// on `par` (the rows do not depend on it).
pub fn run_fixture_on(
    dir: &Path,
    weights: WeightFormat,
    plan: &FixturePlan,
    par: &dyn Parallel,
) -> Result<Vec<Row>, ParityError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| ParityError::Io(dir.join(name).display().to_string(), e))
    };
    let manifest: Value = serde_json::from_slice(&read("manifest.json")?)
        .map_err(|e| ParityError::Manifest(e.to_string()))?;
    let reference = Reference {
        bytes: read("reference.safetensors")?,
    };
    let opts = pack_options(&manifest, weights, plan)?;
    let mut rows = Vec::new();
    let mut packed = Vec::new();
    // Both official formats when the fixture ships both (they must pack identically), else the
    // one it has.
    for ext in ["pth", "safetensors"] {
        let (pv, pa) = (
            dir.join(format!("var.{ext}")),
            dir.join(format!("vae.{ext}")),
        );
        if ext == "safetensors" && !packed.is_empty() && !(pv.is_file() && pa.is_file()) {
            continue;
        }
        let var = read_state_dict(&pv, Role::Var)?;
        let vae = read_state_dict(&pa, Role::Vae)?;
        packed.push(pack(&var, &vae, &opts).map_err(|e| ParityError::Convert(ext.into(), e))?);
    }
    if packed.len() == 2 {
        rows.push(Row {
            id: "pack".into(),
            metric: format!(
                "pth and safetensors pack to identical files ({} bytes)",
                packed[0].len()
            ),
            tolerance: "identical".into(),
            pass: packed[0] == packed[1],
        });
    }
    let bytes = AlignedBytes::new(&packed[0]);
    let model = Model::from_bytes(bytes.as_bytes())?;
    let cases = manifest["cases"].as_array().cloned().unwrap_or_default();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?").to_string();
        match run_case(
            &model,
            case,
            &reference,
            weights,
            !plan.keep.is_empty(),
            par,
        ) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => rows.push(Row {
                id,
                metric: format!("error: {e}"),
                tolerance: "-".into(),
                pass: false,
            }),
        }
    }
    Ok(rows)
}

fn schedule_of(model: &Model<'_>, case: &Value) -> Result<Schedule, ParityError> {
    let cfg = &model.config;
    match &case["schedule"] {
        Value::Array(list) => {
            let pns: Vec<u16> = list
                .iter()
                .map(|v| v.as_u64().unwrap_or(0) as u16)
                .collect();
            let ints = |k: &str| -> Vec<u8> {
                case[k]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0) as u8).collect())
                    .unwrap_or_default()
            };
            let given = Schedule::with_tables(cfg, &pns, &ints("levels"), &ints("phi_index"))?;
            // Our single rule for shortened schedules must agree with the manifest's tables.
            let ours = Schedule::subset(cfg, &pns)?;
            if ours != given {
                return Err(ParityError::Manifest(format!(
                    "schedule rule disagrees: ours levels {:?} phi {:?}, manifest levels {:?} phi {:?}",
                    ours.level, ours.phi, given.level, given.phi
                )));
            }
            Ok(given)
        }
        _ => Ok(Schedule::full(cfg)),
    }
}

fn arena(n: usize) -> AlignedBytes {
    AlignedBytes::zeroed(n)
}

/// `vae::decode` of `f_hat` in an arena of exactly `scratch` bytes, `band_rows` rows a band (0:
/// the whole image at once), each RGB row handed to `sink` with its index.
pub fn decode_in(
    model: &Model<'_>,
    f_hat: &[f32],
    scratch: usize,
    clamp: bool,
    band_rows: usize,
    par: &dyn Parallel,
    sink: &mut dyn FnMut(usize, &[f32]),
) -> srdd_core::Result<()> {
    let mut ab = arena(scratch);
    let mut ar = srdd_core::arena::Arena::new(ab.as_bytes_mut())?;
    vae::decode(
        &model.weights.decoder,
        &model.config,
        f_hat,
        &mut ar,
        clamp,
        band_rows,
        par,
        sink,
    )
}

fn decode_image(
    model: &Model<'_>,
    f_hat: &[f32],
    clamp: bool,
    par: &dyn Parallel,
) -> Result<Vec<f32>, ParityError> {
    let side = model.config.image_side();
    let mut img = vec![0f32; 3 * side * side];
    decode_in(
        model,
        f_hat,
        vae::decoder_scratch_bytes(&model.config, 0),
        clamp,
        0,
        par,
        &mut |y, row| {
            for x in 0..side {
                for ch in 0..3 {
                    img[(ch * side + y) * side + x] = row[x * 3 + ch];
                }
            }
        },
    )?;
    Ok(img)
}

fn concat_tokens(reference: &Reference, key: &str, steps: usize) -> Result<Vec<u32>, ParityError> {
    let mut v = Vec::new();
    for k in per_step(key, steps) {
        v.extend(reference.ints(&k)?.into_iter().map(|x| x as u32));
    }
    Ok(v)
}

fn run_case(
    model: &Model<'_>,
    case: &Value,
    reference: &Reference,
    weights: WeightFormat,
    keep: bool,
    par: &dyn Parallel,
) -> Result<Vec<Row>, ParityError> {
    let cfg = &model.config;
    let id = case["id"].as_str().unwrap_or("?").to_string();
    let kind = case["kind"].as_str().unwrap_or("");
    let sched = schedule_of(model, case)?;
    let steps = sched.len();
    let mut got: HashMap<String, Got> = HashMap::new();
    let attention = match case["attention"].as_str() {
        Some("causal") => Attention::Causal,
        _ => Attention::Markov,
    };
    let label = case["label"].as_u64().unwrap_or(0) as u32;
    let int8 = weights != WeightFormat::F32;
    let mut extra: Vec<(String, f64)> = Vec::new();
    match kind {
        "tokenize" => {
            let image = reference.floats(case["input"].as_str().unwrap_or(""))?;
            let cv = cfg.vae.cvae as usize;
            let p = cfg.latent_side();
            let mut ab = arena(tokenize_bytes(model, &sched));
            let mut toks = vec![0u32; sched.total_tokens()];
            let mut f = vec![0f32; cv * p * p];
            let mut f_hat = vec![0f32; cv * p * p];
            tokenize(
                model,
                &sched,
                &image,
                ab.as_bytes_mut(),
                &mut toks,
                &mut f,
                &mut f_hat,
                par,
            )?;
            let recon = decode_image(model, &f_hat, true, par)?;
            for e in expects(case) {
                let mut off = 0;
                for (k, key) in per_step(&e.key, steps).into_iter().enumerate() {
                    let g = if e.key.contains("{si}") {
                        let m = sched.tokens(k);
                        off += m;
                        Got::I(toks[off - m..off].iter().map(|&t| t as i64).collect())
                    } else if key.ends_with("fhat") {
                        Got::F(f_hat.clone())
                    } else if key.contains("recon")
                        || key.contains("image")
                        || key.contains("decode")
                    {
                        Got::F(recon.clone())
                    } else {
                        Got::F(f.clone())
                    };
                    got.insert(key, g);
                }
            }
        }
        "decode" => {
            let f_hat = reference.floats(case["input"].as_str().unwrap_or(""))?;
            for e in expects(case) {
                let raw = e.key.ends_with("raw");
                got.insert(
                    e.key.clone(),
                    Got::F(decode_image(model, &f_hat, !raw, par)?),
                );
            }
        }
        "teacher_forced" | "sample" | "edit" => {
            let teacher = kind == "teacher_forced";
            let opts = SampleOptions {
                label,
                cfg: case["cfg"].as_f64().unwrap_or(0.0) as f32,
                guidance: if teacher {
                    Guidance::Off
                } else {
                    Guidance::Linear
                },
                top_k: case["top_k"].as_u64().unwrap_or(1) as u32,
                top_p: case["top_p"].as_f64().unwrap_or(0.0) as f32,
                temperature: 1.0,
                seed: case["seed"].as_u64().unwrap_or(0),
                attention,
                ..SampleOptions::new(label)
            };
            if !teacher && case["cfg_schedule"].as_str().unwrap_or("linear") != "linear" {
                return Err(ParityError::Manifest("unsupported cfg_schedule".into()));
            }
            let plan = Plan::new(cfg, &opts, &sched)?;
            let mut ab = arena(plan.arena_bytes());
            let mut gen =
                Generator::with_parallel(model, opts, sched.clone(), ab.as_bytes_mut(), par)?;
            let v = cfg.vae.vocab_size as usize;
            let mut begins = Vec::new();
            let mut acc = 0;
            for k in 0..steps {
                begins.push(acc);
                acc += sched.tokens(k);
            }
            let mut cap = Capture {
                argmax: Vec::new(),
                tokens: Vec::new(),
                fhat: Vec::new(),
                logits: if teacher {
                    vec![0f32; acc * v]
                } else {
                    Vec::new()
                },
                vocab: v,
                begins: if teacher { begins } else { Vec::new() },
                forced: None,
                offset: 0,
            };
            let mut forces: Vec<Vec<i64>> = Vec::new();
            if teacher {
                cap.forced = Some(concat_tokens(
                    reference,
                    case["tokens"].as_str().unwrap_or(""),
                    steps,
                )?);
                gen.run(&mut cap)?;
            } else if kind == "edit" {
                let source = concat_tokens(
                    reference,
                    case["source_tokens"].as_str().unwrap_or(""),
                    steps,
                )?;
                let keep = reference.floats(case["keep_mask"].as_str().unwrap_or(""))?;
                let n = sched.max_tokens();
                let mut resized = vec![0f32; n];
                let mut force = vec![false; n];
                let mut hook =
                    EditHook::new(&keep, cfg.latent_side(), &source, &mut resized, &mut force);
                for k in 0..steps {
                    gen.step(&mut Both(&mut hook, &mut cap))?;
                    let m = sched.tokens(k);
                    forces.push(hook.force[..m].iter().map(|&b| b as i64).collect());
                }
            } else {
                gen.run(&mut cap)?;
            }
            let mut image = Vec::new();
            if !teacher {
                let side = cfg.image_side();
                image = vec![0f32; 3 * side * side];
                gen.decode(&mut |y, row| {
                    for x in 0..side {
                        for ch in 0..3 {
                            image[(ch * side + y) * side + x] = (row[x * 3 + ch] + 1.0) * 0.5;
                        }
                    }
                })?;
            }
            for e in expects(case) {
                if teacher {
                    got.insert(e.key.clone(), Got::F(cap.logits.clone()));
                    continue;
                }
                for (k, key) in per_step(&e.key, steps).into_iter().enumerate() {
                    let g = if !e.key.contains("{si}") {
                        Got::F(image.clone())
                    } else if e.key.contains("force") {
                        Got::I(forces.get(k).cloned().unwrap_or_default())
                    } else if e.key.contains("fhat") {
                        Got::F(cap.fhat[k].clone())
                    } else {
                        Got::I(cap.tokens[k].iter().map(|&t| t as i64).collect())
                    };
                    got.insert(key, g);
                }
            }
            if int8 && !teacher {
                // Forced run: feed the reference's tokens and count how often the int8 engine's
                // greedy choice equals them (forced edit positions excluded).
                let idx_key = expects(case)
                    .into_iter()
                    .find(|e| e.key.contains("idx"))
                    .map(|e| e.key)
                    .unwrap_or_default();
                let want = concat_tokens(reference, &idx_key, steps)?;
                let mut ab2 = arena(plan.arena_bytes());
                let mut gen2 =
                    Generator::with_parallel(model, opts, sched.clone(), ab2.as_bytes_mut(), par)?;
                let mut cap2 = Capture {
                    argmax: Vec::new(),
                    tokens: Vec::new(),
                    fhat: Vec::new(),
                    logits: Vec::new(),
                    vocab: v,
                    begins: Vec::new(),
                    forced: Some(want.clone()),
                    offset: 0,
                };
                gen2.run(&mut cap2)?;
                let free: Vec<bool> = if forces.is_empty() {
                    vec![true; want.len()]
                } else {
                    forces.iter().flatten().map(|&f| f == 0).collect()
                };
                let (mut agree, mut total) = (0usize, 0usize);
                for ((a, w), f) in cap2.argmax.iter().zip(&want).zip(&free) {
                    if *f {
                        total += 1;
                        agree += (a == w) as usize;
                    }
                }
                extra.push(("top1".into(), agree as f64 / total.max(1) as f64));
            }
            if int8 && teacher {
                // Top-1 agreement and KL against the reference logits.
                let key = &expects(case)[0].key;
                let want = reference.floats(key)?;
                let g = &cap.logits;
                let (mut agree, mut kld) = (0usize, 0f64);
                let rows = want.len() / v;
                // Per scale: the rows are the schedule's tokens in order (one image).
                let mut scale_of = Vec::with_capacity(rows);
                for k in 0..steps {
                    scale_of.extend(std::iter::repeat_n(k, sched.tokens(k)));
                }
                let per_scale = scale_of.len() == rows;
                let mut scale_agree = vec![(0usize, 0usize); steps];
                for r in 0..rows {
                    let (a, b) = (&g[r * v..(r + 1) * v], &want[r * v..(r + 1) * v]);
                    let same = srdd_core::sample::argmax(a) == srdd_core::sample::argmax(b);
                    agree += same as usize;
                    if per_scale {
                        let s = &mut scale_agree[scale_of[r]];
                        s.0 += same as usize;
                        s.1 += 1;
                    }
                    kld += kl(b, a);
                }
                // The worst scale's top-1 (the pooled figure when rows do not follow the schedule).
                let worst = scale_agree
                    .iter()
                    .filter(|s| s.1 > 0)
                    .map(|s| s.0 as f64 / s.1 as f64)
                    .fold(f64::INFINITY, f64::min);
                let pooled = agree as f64 / rows.max(1) as f64;
                extra.push((
                    "top1_scale_min".into(),
                    if worst.is_finite() { worst } else { pooled },
                ));
                let (mut max_d, mut sq) = (0f64, 0f64);
                for (a, b) in g.iter().zip(&want) {
                    let d = (*a - *b) as f64;
                    max_d = max_d.max(d.abs());
                    sq += d * d;
                }
                extra.push(("top1".into(), agree as f64 / rows as f64));
                extra.push(("kld".into(), kld / rows as f64));
                extra.push(("maxd".into(), max_d));
                extra.push(("rmsd".into(), (sq / want.len() as f64).sqrt()));
            }
        }
        other => return Err(ParityError::Manifest(format!("unknown case kind {other}"))),
    }

    // Compare.
    let mut all_pass = true;
    let mut metrics = Vec::new();
    let mut tols = Vec::new();
    for e in expects(case) {
        let mut agg = Agg::default();
        let mut pass_key = true;
        let mut agree = (0usize, 0usize);
        // Worst PSNR over the key's float tensors (None when it has none).
        let mut psnr: Option<f64> = None;
        for key in per_step(&e.key, steps) {
            let (want, _) = reference.get(&key)?;
            let g = got
                .get(&key)
                .ok_or_else(|| ParityError::Manifest(format!("no output for {key}")))?;
            if int8 {
                match (g, &want) {
                    (Got::I(a), Tensor::I(b)) => {
                        agree.0 += a.iter().zip(b).filter(|(x, y)| x == y).count();
                        agree.1 += b.len();
                    }
                    (Got::F(a), Tensor::F(b)) => {
                        let range = if key.contains("image")
                            || key.contains("recon")
                            || key.contains("decode")
                        {
                            2.0
                        } else {
                            b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 * 2.0
                        };
                        let v = psnr01(a, b, range.max(1e-12));
                        psnr = Some(psnr.map_or(v, |p: f64| p.min(v)));
                    }
                    _ => {}
                }
            } else {
                pass_key &= compare_exact(&e, g, &want, &mut agg);
            }
        }
        if int8 {
            if agree.1 > 0 {
                metrics.push(format!(
                    "{}: agree {:.1}%",
                    e.key,
                    100.0 * agree.0 as f64 / agree.1 as f64
                ));
            }
            if let Some(p) = psnr {
                metrics.push(format!("{}: psnr {:.1} dB", e.key, p));
            }
        } else {
            metrics.push(match (&agg.note, agg.max_abs) {
                (Some(n), _) => format!("{}: {n}", e.key),
                (None, Some(d)) => format!("{}: max|d| {d:.2e}", e.key),
                (None, None) => format!("{}: {}/{} differ", e.key, agg.bad, agg.total),
            });
            tols.push(if e.exact {
                "exact".to_string()
            } else {
                format!("{:.0e}+{:.0e}|ref|", e.atol, e.rtol)
            });
            all_pass &= pass_key;
        }
    }
    if int8 {
        let b = if keep { PLAN_BOUNDS } else { INT8_BOUNDS };
        let (pass, tol) = match kind {
            "teacher_forced" => {
                let get = |k: &str| extra.iter().find(|x| x.0 == k).map_or(f64::NAN, |x| x.1);
                let (top1, worst, kld) = (get("top1"), get("top1_scale_min"), get("kld"));
                metrics.push(format!(
                    "top1 {:.1}% (worst scale {:.1}%) kld {:.5} logit err max {:.3} rms {:.4}",
                    100.0 * top1,
                    100.0 * worst,
                    kld,
                    get("maxd"),
                    get("rmsd")
                ));
                let scales = if b.teacher_scale_top1_min > 0.0 {
                    format!(" (>={:.0}% per scale)", 100.0 * b.teacher_scale_top1_min)
                } else {
                    String::new()
                };
                (
                    top1 >= b.teacher_top1_min
                        && worst >= b.teacher_scale_top1_min
                        && kld <= b.teacher_kld_max,
                    format!(
                        "top1>={:.0}%{scales} kld<={}",
                        100.0 * b.teacher_top1_min,
                        b.teacher_kld_max
                    ),
                )
            }
            "decode" | "tokenize" => {
                // Tokenize: the bound is on the encoder output; VQ decisions downstream of it are
                // near-ties on random weights and flip (reported, not bounded).
                let worst = metrics
                    .iter()
                    .filter(|m| {
                        kind == "decode"
                            || !(m.contains("{si}")
                                || m.contains("fhat")
                                || m.contains("recon")
                                || m.contains("image"))
                    })
                    .filter_map(|m| m.split("psnr ").nth(1))
                    .filter_map(|s| s.split(' ').next()?.parse::<f64>().ok())
                    .fold(f64::INFINITY, f64::min);
                let what = if kind == "decode" {
                    "image"
                } else {
                    "encoder output"
                };
                (
                    worst >= b.image_psnr_min,
                    format!("{what} psnr>={} dB", b.image_psnr_min),
                )
            }
            _ => {
                // Free greedy runs diverge once one token flips (reported above); the bound is on
                // the forced run's greedy agreement with the reference tokens.
                let top1 = extra.iter().find(|x| x.0 == "top1").map_or(0.0, |x| x.1);
                metrics.push(format!("forced top1 {:.1}%", 100.0 * top1));
                (
                    top1 >= b.sample_forced_top1_min,
                    format!("forced top1>={:.0}%", 100.0 * b.sample_forced_top1_min),
                )
            }
        };
        all_pass = pass;
        tols.push(tol);
    }
    Ok(vec![Row {
        id,
        metric: metrics.join("; "),
        tolerance: tols.join(", "),
        pass: all_pass,
    }])
}

/// KL(p_ref ‖ p_got) from logits.
fn kl(want: &[f32], got: &[f32]) -> f64 {
    let lse = |x: &[f32]| {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
        m + x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lw, lg) = (lse(want), lse(got));
    want.iter()
        .zip(got)
        .map(|(w, g)| {
            let pw = (*w as f64 - lw).exp();
            pw * ((*w as f64 - lw) - (*g as f64 - lg))
        })
        .sum()
}
