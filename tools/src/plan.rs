//! The automatic precision plan (`srdd-tools pack --weights int8 --max-growth 10%`, issue #12):
//! rank the quantizable weights of an int8 file by measured sensitivity and keep the worst in
//! f16 (or f32) under a byte budget.
//!
//! Method:
//!
//! 1. Pack f32 and plain int8 (plus the user's `--keep` rules, applied first) in memory; sample
//!    the calibration images once with the float model ([`quant_report::calibrate`]: tokens,
//!    conditional logits, final `f_hat`, the float decoder's image).
//! 2. Every candidate weight is measured alone on top of that start: a transformer weight by
//!    the teacher-forced per-scale KL(float ‖ int8), a decoder weight by the decoder's error on
//!    the stored `f_hat`s (MSE). Both enter one objective as fractions of plain int8's own error,
//!    `J = KL / KL(int8) + MSE / MSE(int8)` (KL: the mean over scales of the per-scale mean), so
//!    a benefit `ΔJ` of 0.1 removes a tenth of int8's error of either kind. A part whose targets
//!    are already met at the start (often the decoder's PSNR) offers no candidates. Candidates
//!    are ranked by `ΔJ` per byte of file growth (exact, from the packed file's length).
//! 3. Walk the ranking, re-measuring the combined plan after each addition: a weight is kept
//!    when it lowers `J`, the walk ends when every target is met or at the first weight that
//!    does not fit in the budget. Ending there (rather than skipping to smaller ones) makes the
//!    walk independent of the budget except for where it stops, so a larger budget keeps a
//!    superset of a smaller one's weights and measures no worse: monotone by construction.
//!
//! The encoder (and `quant_conv`) are not candidates: they run only for tokenize/edit, never
//! in sampling, so no calibration figure depends on them. The Phi convolutions are always f32.

use crate::checkpoint::TensorStore;
use crate::convert::{
    catalog, format_name, infer_config, pack, packed_len, ConvertError, KeepRule, PackOptions,
};
use crate::quant_report::{self, Calibration, QuantReportError, Scale};
use srdd_core::aligned::AlignedBytes;
use srdd_core::parallel::{Parallel, Sequential};
use srdd_core::{Model, WeightFormat};

/// Why no plan was made (one line each).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The automatic plan is for int8 files only.
    #[error("--max-growth needs --weights int8 (the file's weights are {0})")]
    NotInt8(&'static str),
    /// The kept format is not more precise than int8.
    #[error("the automatic plan keeps weights in f16 or f32, not {0}")]
    KeptFormat(&'static str),
    /// No calibration image.
    #[error("--calib 0: at least one calibration image is needed")]
    NoCalib,
    /// A `--max-growth` text that does not parse.
    #[error("--max-growth {0}: expected a percentage like 10% or a byte count like 62720")]
    Growth(String),
    /// The user's `--keep` rules alone exceed the budget.
    #[error("the --keep rules alone grow the file by {used} B, over the --max-growth budget of {budget} B")]
    KeepOverBudget {
        /// Growth of the user's rules.
        used: i64,
        /// The budget.
        budget: u64,
    },
    /// Packing failed.
    #[error("{0}")]
    Convert(#[from] ConvertError),
    /// A measurement failed.
    #[error("{0}")]
    Report(#[from] QuantReportError),
    /// The engine refused a packed file.
    #[error("engine: {0}")]
    Core(#[from] srdd_core::Error),
    /// A fixture could not be read (the parity helper).
    #[error("{0}")]
    Fixture(#[from] crate::parity::ParityError),
}

/// `--max-growth`: the byte budget over the plain int8 file, as `N%` of that file's length or
/// as a plain byte count `N` (no unit suffixes: one clear syntax).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Growth {
    /// Percent of the plain int8 file's length (rounded down to whole bytes).
    Percent(f64),
    /// Bytes.
    Bytes(u64),
}

impl Growth {
    /// Parses `10%`, `2.5%` or `62720`.
    pub fn parse(text: &str) -> Result<Growth, PlanError> {
        let bad = || PlanError::Growth(text.to_string());
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad());
            }
            Ok(Growth::Percent(v))
        } else {
            t.parse::<u64>().map(Growth::Bytes).map_err(|_| bad())
        }
    }

    /// The budget in bytes for a plain int8 file of `plain_len` bytes.
    pub fn bytes(self, plain_len: u64) -> u64 {
        match self {
            Growth::Bytes(b) => b,
            Growth::Percent(p) => (plain_len as f64 * p / 100.0).floor() as u64,
        }
    }
}

/// The figures a plan aims at (the defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Targets {
    /// Teacher-forced top-1 agreement at every scale (fraction).
    pub top1: f64,
    /// Mean KL(float ‖ int8) at every scale (nats).
    pub kl_mean: f64,
    /// Minimum decoder PSNR (dB) on the calibration `f_hat`s.
    pub decoder_psnr_db: f64,
    /// Forced-token agreement over every token (fraction).
    pub forced_agreement: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            top1: 0.99,
            kl_mean: 1e-3,
            decoder_psnr_db: 40.0,
            forced_agreement: 0.98,
        }
    }
}

/// Options of the automatic plan.
#[derive(Clone, Debug)]
pub struct AutoPlanOptions {
    /// Byte budget: growth of the file over the plain int8 file (user `--keep` rules included).
    /// 0 turns the automatic plan off (the plain int8 file, byte-identical).
    pub max_growth: Growth,
    /// Format of the kept weights (f16 or f32).
    pub format: WeightFormat,
    /// Calibration images sampled from the float model.
    pub calib: usize,
    /// What the plan aims at; it stops early once all are met.
    pub targets: Targets,
}

impl Default for AutoPlanOptions {
    fn default() -> Self {
        AutoPlanOptions {
            max_growth: Growth::Percent(10.0),
            format: WeightFormat::F16,
            calib: 16,
            targets: Targets::default(),
        }
    }
}

/// Measured figures of one int8 variant on the calibration set.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Teacher-forced, per scale (no free run: `free_same` is 0).
    pub scales: Vec<Scale>,
    /// Minimum decoder PSNR (dB) over the calibration `f_hat`s.
    pub decoder_psnr_db: f64,
    /// Mean squared decoder error in the PSNR's units.
    pub decoder_mse: f64,
}

impl Figures {
    /// Forced-token agreement over every token.
    pub fn forced_agreement(&self) -> f64 {
        let (a, t) = self
            .scales
            .iter()
            .fold((0, 0), |(a, t), s| (a + s.top1, t + s.tokens));
        a as f64 / t.max(1) as f64
    }

    /// Mean KL of scale `s`.
    pub fn kl_mean(s: &Scale) -> f64 {
        s.kl_sum / s.tokens.max(1) as f64
    }

    /// Top-1 agreement of scale `s`.
    pub fn top1(s: &Scale) -> f64 {
        s.top1 as f64 / s.tokens.max(1) as f64
    }

    /// Mean over scales of the mean KL.
    pub fn kl_scales(&self) -> f64 {
        let n = self.scales.len().max(1) as f64;
        self.scales.iter().map(Figures::kl_mean).sum::<f64>() / n
    }

    /// The objective `J` the plan lowers: each part's error as a fraction of plain int8's
    /// (`base`), summed, so both parts share one scale (2 at plain int8, 0 at float). Top-1
    /// misses are not in it: counted on a calibration set they move by whole near-tie tokens,
    /// and a walk led by them kept worse sets (measured on emoji32, docs/QUANTIZATION.md).
    pub fn objective(&self, base: &Figures) -> f64 {
        let frac = |x: f64, b: f64| if b > 0.0 { x / b } else { 0.0 };
        frac(self.kl_scales(), base.kl_scales()) + frac(self.decoder_mse, base.decoder_mse)
    }

    /// Whether the transformer's targets are met (top-1 and KL at every scale, forced tokens).
    pub fn var_meets(&self, t: &Targets) -> bool {
        self.scales
            .iter()
            .all(|s| Figures::top1(s) >= t.top1 && Figures::kl_mean(s) <= t.kl_mean)
            && self.forced_agreement() >= t.forced_agreement
    }

    /// Whether every target is met.
    pub fn meets(&self, t: &Targets) -> bool {
        self.var_meets(t) && self.decoder_psnr_db >= t.decoder_psnr_db
    }
}

/// Which part of the model a candidate weight belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The transformer (teacher-forced logits).
    Var,
    /// The VQVAE decoder, `post_quant_conv` included (decoded images).
    Decoder,
}

/// One candidate weight, measured alone on top of the start (user rules).
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Canonical tensor name.
    pub name: String,
    /// Its part.
    pub part: Part,
    /// File growth of keeping it alone (bytes; may be ≤ 0 for tiny tensors).
    pub bytes: i64,
    /// `ΔJ` of keeping it alone (positive: better).
    pub benefit: f64,
}

/// One step of the walk: a candidate that was re-measured in the combined plan.
#[derive(Clone, Debug)]
pub struct Step {
    /// Canonical tensor name.
    pub name: String,
    /// Its benefit measured alone (`ΔJ`, as in [`Candidate`]).
    pub benefit: f64,
    /// File growth of the combined plan with it (over the plain int8 file).
    pub growth: i64,
    /// `J` of the combined plan with it.
    pub objective: f64,
    /// Kept (it lowered `J`) or not.
    pub kept: bool,
}

/// The plan and what it measured.
#[derive(Clone, Debug)]
pub struct AutoPlan {
    /// Every rule to pack with: the user's first, then one exact name per chosen weight.
    pub keep: Vec<KeepRule>,
    /// The chosen weights' rules alone (exact names).
    pub auto: Vec<KeepRule>,
    /// Length of the plain int8 file.
    pub plain_len: u64,
    /// The budget in bytes.
    pub budget: u64,
    /// Growth of the user's rules alone.
    pub user_growth: i64,
    /// Growth of the whole plan (user rules and chosen weights) over the plain int8 file.
    pub growth: i64,
    /// Plain int8 (no rule at all).
    pub before: Figures,
    /// The plan's file.
    pub after: Figures,
    /// Every candidate, best per byte first.
    pub candidates: Vec<Candidate>,
    /// The walk, in order.
    pub steps: Vec<Step>,
    /// Why the walk ended.
    pub ended: &'static str,
}

/// Measures an int8 variant's parts against the calibration.
struct Meter<'a, V: ?Sized, A: ?Sized> {
    var: &'a V,
    vae: &'a A,
    opts: PackOptions,
    float: Model<'a>,
    cal: Calibration,
    par: &'a dyn Parallel,
}

impl<V: TensorStore + ?Sized, A: TensorStore + ?Sized> Meter<'_, V, A> {
    fn options(&self, keep: &[KeepRule]) -> PackOptions {
        PackOptions {
            keep: keep.to_vec(),
            ..self.opts.clone()
        }
    }

    fn growth(&self, keep: &[KeepRule], plain_len: u64) -> Result<i64, PlanError> {
        Ok(packed_len(self.var, self.vae, &self.options(keep))? as i64 - plain_len as i64)
    }

    /// Packs with `keep` and measures the asked parts; the others are copied from `base`
    /// (their weights are bitwise those of `base`'s file).
    fn measure(
        &self,
        keep: &[KeepRule],
        var: bool,
        dec: bool,
        base: &Figures,
    ) -> Result<Figures, PlanError> {
        let bytes = AlignedBytes::new(&pack(self.var, self.vae, &self.options(keep))?);
        let q = Model::from_bytes(bytes.as_bytes())?;
        let mut f = base.clone();
        if var {
            f.scales = quant_report::forced_scales(&self.float, &q, &self.cal, self.par)?;
        }
        if dec {
            (f.decoder_psnr_db, f.decoder_mse) =
                quant_report::decoder_error(&q, &self.cal, self.par)?;
        }
        Ok(f)
    }
}

/// The automatic plan, measured sequentially (see [`auto_plan_on`]).
pub fn auto_plan<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
    auto: &AutoPlanOptions,
) -> Result<AutoPlan, PlanError> {
    auto_plan_on(var, vae, opts, auto, &Sequential)
}

/// The automatic plan for packing `var`/`vae` with `opts` (int8; `opts.keep` are the user's
/// rules, applied first and counted against the budget); `par` runs the measurements.
pub fn auto_plan_on<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
    auto: &AutoPlanOptions,
    par: &dyn Parallel,
) -> Result<AutoPlan, PlanError> {
    if opts.weights != WeightFormat::Int8 {
        return Err(PlanError::NotInt8(format_name(opts.weights)));
    }
    if auto.format == WeightFormat::Int8 {
        return Err(PlanError::KeptFormat(format_name(auto.format)));
    }
    if auto.calib == 0 {
        return Err(PlanError::NoCalib);
    }
    let user = opts.keep.clone();
    let plain = PackOptions {
        keep: Vec::new(),
        ..opts.clone()
    };
    let plain_len = packed_len(var, vae, &plain)?;
    let budget = auto.max_growth.bytes(plain_len);
    // Checked before any measurement: it needs the layout only.
    let user_growth = packed_len(var, vae, opts)? as i64 - plain_len as i64;
    if user_growth > budget as i64 {
        return Err(PlanError::KeepOverBudget {
            used: user_growth,
            budget,
        });
    }
    let f32_bytes = AlignedBytes::new(&pack(
        var,
        vae,
        &PackOptions {
            weights: WeightFormat::F32,
            keep: Vec::new(),
            ..opts.clone()
        },
    )?);
    let float = Model::from_bytes(f32_bytes.as_bytes())?;
    let cal = quant_report::calibrate(&float, auto.calib, par)?;
    let m = Meter {
        var,
        vae,
        opts: plain,
        float,
        cal,
        par,
    };
    let t = &auto.targets;
    let before = m.measure(&[], true, true, &Figures::default())?;
    let mut state = user.clone();
    let mut fig = if user.is_empty() {
        before.clone()
    } else {
        m.measure(&state, true, true, &before)?
    };
    let mut plan = AutoPlan {
        keep: Vec::new(),
        auto: Vec::new(),
        plain_len,
        budget,
        user_growth,
        growth: user_growth,
        before,
        after: Figures::default(),
        candidates: Vec::new(),
        steps: Vec::new(),
        ended: "",
    };
    if budget == 0 {
        plan.ended = "budget 0: the automatic plan is off";
    } else if fig.meets(t) {
        plan.ended = "every target met";
    } else {
        // Every candidate alone on top of the start.
        let cfg = infer_config(var, vae, &m.opts)?;
        let j0 = fig.objective(&plan.before);
        // A part whose targets are met at the start offers no candidates: the bytes go where a
        // target is missed.
        let (var_open, dec_open) = (!fig.var_meets(t), fig.decoder_psnr_db < t.decoder_psnr_db);
        for e in catalog(&cfg, m.opts.ada_tables.is_some())? {
            let n = e.name.as_str();
            let part = if n.starts_with("decoder.") || n.starts_with("post_quant_conv.") {
                Part::Decoder
            } else if ["encoder.", "quant_conv.", "quantize."]
                .iter()
                .any(|p| n.starts_with(p))
            {
                continue;
            } else {
                Part::Var
            };
            let open = match part {
                Part::Var => var_open,
                Part::Decoder => dec_open,
            };
            // A weight a user rule keeps in float is settled; one it keeps int8 with two-pass
            // activations (`=a16`) still is a candidate for the float format.
            if !open || !e.is_weight || user.iter().any(|r| r.matches(n) && !r.act16) {
                continue;
            }
            let rule = KeepRule {
                pattern: e.name.clone(),
                format: auto.format,
                act16: false,
            };
            let mut keep = state.clone();
            keep.push(rule);
            let bytes = m.growth(&keep, plain_len)? - user_growth;
            let f = m.measure(&keep, part == Part::Var, part == Part::Decoder, &fig)?;
            plan.candidates.push(Candidate {
                name: e.name,
                part,
                bytes,
                benefit: j0 - f.objective(&plan.before),
            });
        }
        // Best benefit per byte first; a weight that costs nothing (or saves bytes) first of
        // all; a weight that does not help alone last (with others it may), least harmful
        // first; ties by name so the order is reproducible.
        let score = |c: &Candidate| {
            if c.benefit <= 0.0 {
                // Below every helpful weight, best (least harmful) first.
                c.benefit - 1.0
            } else if c.bytes <= 0 {
                f64::INFINITY
            } else {
                c.benefit / c.bytes as f64
            }
        };
        plan.candidates
            .sort_by(|a, b| score(b).total_cmp(&score(a)).then(a.name.cmp(&b.name)));
        plan.ended = "every candidate tried";
        for c in &plan.candidates {
            let rule = KeepRule {
                pattern: c.name.clone(),
                format: auto.format,
                act16: false,
            };
            let mut keep = state.clone();
            keep.push(rule.clone());
            let growth = m.growth(&keep, plain_len)?;
            if growth > budget as i64 {
                plan.ended = "budget spent (the next weight does not fit)";
                break;
            }
            let f = m.measure(&keep, c.part == Part::Var, c.part == Part::Decoder, &fig)?;
            let j = f.objective(&plan.before);
            let kept = j < fig.objective(&plan.before);
            plan.steps.push(Step {
                name: c.name.clone(),
                benefit: c.benefit,
                growth,
                objective: j,
                kept,
            });
            if kept {
                state = keep;
                fig = f;
                plan.growth = growth;
                plan.auto.push(rule);
                if fig.meets(t) {
                    plan.ended = "every target met";
                    break;
                }
            }
        }
    }
    plan.keep = state;
    plan.after = fig;
    Ok(plan)
}

/// The plan as terminal lines: the chosen weights, then before/after per scale.
pub fn to_text(p: &AutoPlan, t: &Targets) -> String {
    let mut s = format!(
        "precision plan: budget {} B over the plain int8 file ({} B); {} weight(s) kept, growth {} B ({})\n",
        p.budget,
        p.plain_len,
        p.auto.len(),
        p.growth,
        p.ended
    );
    if p.user_growth != 0 {
        s += &format!("  of which --keep rules: {} B\n", p.user_growth);
    }
    for st in &p.steps {
        s += &format!(
            "  {} {:<44} benefit {:>9.3e}  growth {:>8} B  J {:.4}\n",
            if st.kept { "keep" } else { "skip" },
            st.name,
            st.benefit,
            st.growth,
            st.objective
        );
    }
    s += "\nstep  top1 % before → after   KL mean before → after\n";
    for (k, (a, b)) in p.before.scales.iter().zip(&p.after.scales).enumerate() {
        s += &format!(
            "{:<5} {:>6.1} → {:>6.1}        {:.2e} → {:.2e}\n",
            k,
            100.0 * Figures::top1(a),
            100.0 * Figures::top1(b),
            Figures::kl_mean(a),
            Figures::kl_mean(b)
        );
    }
    s += &format!(
        "forced-token agreement {:.1} % → {:.1} %\ndecoder PSNR {:.1} → {:.1} dB\nJ {:.4} → {:.4}; targets (top-1 ≥ {} %, KL ≤ {:.0e}, PSNR ≥ {} dB, forced ≥ {} %) {}",
        100.0 * p.before.forced_agreement(),
        100.0 * p.after.forced_agreement(),
        p.before.decoder_psnr_db,
        p.after.decoder_psnr_db,
        p.before.objective(&p.before),
        p.after.objective(&p.before),
        100.0 * t.top1,
        t.kl_mean,
        t.decoder_psnr_db,
        100.0 * t.forced_agreement,
        if p.after.meets(t) { "met" } else { "not met" }
    );
    s
}
