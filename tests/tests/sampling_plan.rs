//! The sampling plan (issue #5): per-step settings tables, guidance schedules, token chunks,
//! refinement passes with resampling policies, and editing with refinement.

mod common;

use common::{bits, run_full, tokenize_image, with_each_model, with_model, RunOut, OFFICIAL, SIX};
use srdd_core::aligned::AlignedBytes;
use srdd_core::edit::EditHook;
use srdd_core::generate::{
    Both, Generator, Guidance, Plan, SampleOptions, StepHook, StepSettings, StepTable,
};
use srdd_core::parallel::Sequential;
use srdd_core::resample::{ConfidenceThreshold, FixedFraction, KeepAll, ResamplePolicy};
use srdd_core::tokenize::tokenize_bytes;
use srdd_core::{Attention, Error, Model, Schedule, WeightFormat};

/// Every fixture in the formats the sampling plan is checked in.
const MODELS: [(&str, WeightFormat); 4] = [
    (SIX, WeightFormat::F32),
    (SIX, WeightFormat::Int8),
    (OFFICIAL, WeightFormat::F32),
    (OFFICIAL, WeightFormat::Int8),
];

fn opts(label: u32, attention: Attention) -> SampleOptions {
    SampleOptions {
        top_k: 50,
        seed: 7,
        attention,
        ..SampleOptions::new(label)
    }
}

/// Runs with `policy` choosing what refinement passes draw again; exactly `Plan` bytes.
fn run_policy(
    model: &Model<'_>,
    o: SampleOptions,
    sched: &Schedule,
    policy: &mut dyn ResamplePolicy,
    hook: &mut dyn StepHook,
) -> srdd_core::Result<RunOut> {
    let plan = Plan::new(&model.config, &o, sched)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(model, o, sched.clone(), arena.as_bytes_mut())?;
    let mut rec = common::Recorder::default();
    gen.run_with(&mut Both(hook, &mut rec), policy)?;
    let f_hat = gen.f_hat().to_vec();
    let mut image = Vec::new();
    gen.decode(&mut |_y, row| image.extend_from_slice(row))?;
    Ok(RunOut {
        tokens: rec.tokens,
        logits: Vec::new(),
        f_hat,
        image,
    })
}

struct NoOp;
impl StepHook for NoOp {}

#[test]
fn token_chunks_do_not_change_results() {
    with_each_model(&MODELS, |fixture, w, model, sched| {
        for attention in [Attention::Markov, Attention::Causal] {
            let base = run_full(model, opts(2, attention), sched).unwrap();
            for chunk in [1u16, 7, 16] {
                let o = SampleOptions {
                    chunk,
                    ..opts(2, attention)
                };
                let got = run_full(model, o, sched).unwrap();
                let what = format!("{fixture} {w:?} {attention:?} chunk {chunk}");
                assert_eq!(got.tokens, base.tokens, "{what}");
                assert_eq!(bits(&got.logits.concat()), bits(&base.logits.concat()));
                assert_eq!(bits(&got.image), bits(&base.image), "{what}");
                // Smaller chunks need fewer bytes.
                let small = Plan::new(&model.config, &o, sched).unwrap().step_bytes;
                let big = Plan::new(&model.config, &opts(2, attention), sched)
                    .unwrap()
                    .step_bytes;
                assert!(small < big, "{what}: {small} >= {big}");
            }
        }
    });
}

/// The low-memory configuration (one-token chunks, one CFG row at a time, one-row decoder bands
/// with the two-row rings) gives the default configuration's tokens, logits and image bit for bit
/// in exactly `Plan::arena_bytes` (`run_full`), and needs fewer bytes.
#[test]
fn low_memory_configuration_does_not_change_results() {
    with_each_model(&MODELS, |fixture, w, model, sched| {
        for attention in [Attention::Markov, Attention::Causal] {
            let base = run_full(model, opts(3, attention), sched).unwrap();
            for band_rows in [1u16, 2] {
                let o = SampleOptions {
                    band_rows,
                    ..SampleOptions {
                        top_k: 50,
                        seed: 7,
                        attention,
                        ..SampleOptions::low_memory(3)
                    }
                };
                let got = run_full(model, o, sched).unwrap();
                let what = format!("{fixture} {w:?} {attention:?} low-memory band {band_rows}");
                assert_eq!(got.tokens, base.tokens, "{what}");
                assert_eq!(bits(&got.logits.concat()), bits(&base.logits.concat()));
                assert_eq!(bits(&got.image), bits(&base.image), "{what}");
                let small = Plan::new(&model.config, &o, sched).unwrap().arena_bytes();
                let big = Plan::new(&model.config, &opts(3, attention), sched)
                    .unwrap()
                    .arena_bytes();
                assert!(small < big, "{what}: {small} >= {big}");
            }
        }
    });
}

#[test]
fn step_tables_reproduce_the_global_settings() {
    with_model(OFFICIAL, WeightFormat::F32, |model| {
        let sched = Schedule::full(&model.config);
        let steps = sched.len();
        let base = opts(1, Attention::Markov);
        let tabled = |table: StepTable| SampleOptions {
            table: Some(table),
            ..base
        };
        let reference = run_full(model, base, &sched).unwrap();
        let mut t = StepTable::filled(
            StepSettings {
                guidance: 0.0,
                temperature: base.temperature,
                top_k: base.top_k,
                top_p: base.top_p,
                refine: 0,
            },
            steps,
        );
        for k in 0..steps {
            t.rows[k].guidance = base.cfg * k as f32 / (steps - 1) as f32;
        }
        let got = run_full(model, tabled(t), &sched).unwrap();
        assert_eq!(got.tokens, reference.tokens);
        assert_eq!(bits(&got.image), bits(&reference.image));
        // Constant guidance equals a constant table.
        let constant = SampleOptions {
            guidance: Guidance::Constant,
            ..base
        };
        for k in 0..steps {
            t.rows[k].guidance = base.cfg;
        }
        let a = run_full(model, constant, &sched).unwrap();
        let b = run_full(model, tabled(t), &sched).unwrap();
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(
            a.tokens, reference.tokens,
            "constant guidance changes the draw"
        );
        // A per-step temperature row takes effect only on its step.
        let mut hot = t;
        hot.rows[steps - 1].temperature = 5.0;
        let c = run_full(model, tabled(hot), &sched).unwrap();
        assert_eq!(c.tokens[..steps - 1], b.tokens[..steps - 1]);
        assert_ne!(c.tokens[steps - 1], b.tokens[steps - 1]);
        // Wrong tables are typed errors.
        let mut short = t;
        short.len = steps - 1;
        let err = Plan::new(&model.config, &tabled(short), &sched);
        assert!(matches!(err, Err(Error::BadOption(_))), "{err:?}");
        let mut bad = t;
        bad.rows[2].top_p = 2.0;
        let err = Plan::new(&model.config, &tabled(bad), &sched);
        assert!(matches!(err, Err(Error::BadOption(_))), "{err:?}");
        let err = Plan::new(&model.config, &SampleOptions { refine: 17, ..base }, &sched);
        assert!(matches!(err, Err(Error::BadOption(_))), "{err:?}");
    });
}

#[test]
fn refinement_with_keep_all_is_a_no_op() {
    with_each_model(&MODELS, |fixture, w, model, sched| {
        let base = opts(3, Attention::Markov);
        let reference = run_full(model, base, sched).unwrap();
        let refined = SampleOptions { refine: 3, ..base };
        let got = run_policy(model, refined, sched, &mut KeepAll, &mut NoOp).unwrap();
        assert_eq!(got.tokens, reference.tokens, "{fixture} {w:?}");
        assert_eq!(bits(&got.image), bits(&reference.image), "{fixture} {w:?}");
    });
}

#[test]
fn refinement_resamples_within_the_plan() {
    with_model(OFFICIAL, WeightFormat::Int8, |model| {
        let sched = Schedule::full(&model.config);
        let base = opts(3, Attention::Markov);
        let reference = run_full(model, base, &sched).unwrap();
        let refined = SampleOptions { refine: 2, ..base };
        let refine_with =
            |policy: &mut dyn ResamplePolicy| run_policy(model, refined, &sched, policy, &mut NoOp);
        // Exactly the planned bytes suffice (run_policy), one byte less is a typed error.
        let a = refine_with(&mut FixedFraction { fraction: 0.5 }).unwrap();
        assert_eq!(
            a.tokens[0], reference.tokens[0],
            "the first step is never refined"
        );
        assert_ne!(a.tokens, reference.tokens, "refinement redraws tokens");
        let b = refine_with(&mut FixedFraction { fraction: 0.5 }).unwrap();
        assert_eq!(a.tokens, b.tokens, "deterministic per seed");
        let c = refine_with(&mut ConfidenceThreshold { threshold: 0.3 }).unwrap();
        assert!(c.image.iter().all(|v| v.is_finite()));
        let plan = Plan::new(&model.config, &refined, &sched).unwrap();
        let plain = Plan::new(&model.config, &base, &sched).unwrap();
        assert!(plan.step_bytes > plain.step_bytes);
        let mut arena = AlignedBytes::zeroed(plan.arena_bytes() - 1);
        assert!(matches!(
            Generator::new(model, refined, sched.clone(), arena.as_bytes_mut()),
            Err(Error::ArenaTooSmall { .. })
        ));
    });
}

#[test]
fn forcing_every_token_reproduces_the_reconstruction_even_with_refinement() {
    for w in [WeightFormat::F32, WeightFormat::Int8] {
        with_model(SIX, w, |model| {
            let cfg = &model.config;
            let sched = Schedule::full(cfg);
            let side = cfg.image_side();
            let image: Vec<f32> = (0..3 * side * side)
                .map(|i| ((i as f32 * 0.37).sin() * 0.8).clamp(-1.0, 1.0))
                .collect();
            let p = cfg.latent_side();
            let mut ta = AlignedBytes::zeroed(tokenize_bytes(model, &sched));
            let tokenized =
                tokenize_image(model, &sched, &image, ta.as_bytes_mut(), &Sequential).unwrap();
            let (toks, f_hat) = (tokenized.tokens, tokenized.f_hat);
            let keep = vec![1f32; p * p];
            let n = sched.max_tokens();
            for refine in [0u8, 2] {
                let (mut resized, mut force) = (vec![0f32; n], vec![false; n]);
                let mut hook = EditHook::new(&keep, p, &toks, &mut resized, &mut force);
                let o = SampleOptions {
                    refine,
                    ..opts(0, Attention::Markov)
                };
                let got = run_policy(
                    model,
                    o,
                    &sched,
                    &mut FixedFraction { fraction: 1.0 },
                    &mut hook,
                )
                .unwrap();
                assert_eq!(got.tokens.concat(), toks, "{w:?} refine {refine}");
                assert_eq!(bits(&got.f_hat), bits(&f_hat), "{w:?} refine {refine}");
            }
        });
    }
}
