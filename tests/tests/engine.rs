//! Engine behaviour on the packed fixtures: exact arena plans, option validation, determinism,
//! attention policies, schedules, tokenizer round trips and the sampler's distribution.

mod common;

use common::{
    bits, run_full, run_recorded, tokenize_image, with_each_model, with_model, Tokenized, OFFICIAL,
    SIX,
};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Guidance, Plan, SampleOptions, StepHook};
use srdd_core::parallel::{Sequential, StdThreads};
use srdd_core::tokenize::{fhat_from_tokens, tokenize_bytes};
use srdd_core::{Attention, Error, Model, NoHook, Schedule, WeightFormat};

fn guided(label: u32, attention: Attention, seed: u64) -> SampleOptions {
    SampleOptions {
        label,
        cfg: 1.5,
        guidance: Guidance::Linear,
        top_k: 100,
        top_p: 0.96,
        temperature: 1.0,
        seed,
        attention,
        ..SampleOptions::new(label)
    }
}

fn greedy(label: u32, attention: Attention) -> SampleOptions {
    SampleOptions {
        top_k: 1,
        top_p: 0.0,
        ..guided(label, attention, 0)
    }
}

// ---- Arena plans ----

#[test]
fn plan_arena_bytes_is_exact() {
    with_each_model(
        &[
            (SIX, WeightFormat::F32),
            (SIX, WeightFormat::Int8),
            (OFFICIAL, WeightFormat::F32),
            (OFFICIAL, WeightFormat::Int8),
        ],
        |fixture, w, model, sched| {
            let cfg = &model.config;
            for attention in [Attention::Markov, Attention::Causal] {
                let opts = guided(1, attention, 11);
                let plan = Plan::new(cfg, &opts, sched).unwrap();
                let what = format!("{fixture} {w:?} {attention:?}");
                assert_eq!(plan.rows, 2, "{what}");
                assert_eq!(plan.max_tokens, sched.max_tokens(), "{what}");
                match attention {
                    Attention::Markov => {
                        assert_eq!((plan.cache_tokens, plan.kv_cache_bytes), (0, 0), "{what}");
                        assert_eq!(plan.max_keys, sched.max_tokens(), "{what}");
                    }
                    Attention::Causal => {
                        assert_eq!(plan.cache_tokens, sched.total_tokens(), "{what}");
                        assert_eq!(plan.max_keys, sched.total_tokens(), "{what}");
                        let c = cfg.var.embed_dim as usize;
                        let want = 2 * 4 * cfg.var.depth as usize * 2 * sched.total_tokens() * c;
                        assert_eq!(plan.kv_cache_bytes, want, "{what}");
                    }
                }
                let n = plan.arena_bytes();
                assert_eq!(
                    n,
                    plan.persistent_bytes + plan.step_bytes.max(plan.decode_bytes)
                );

                // Exactly the plan: a full run and decode succeed.
                let mut arena = AlignedBytes::zeroed(n);
                let mut gen = Generator::new(model, opts, sched.clone(), arena.as_bytes_mut())
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                gen.run(&mut NoHook)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let mut rows = 0usize;
                gen.decode(&mut |y, row| {
                    assert_eq!(y, rows);
                    assert_eq!(row.len(), 3 * cfg.image_side());
                    assert!(row.iter().all(|v| (-1.0..=1.0).contains(v)));
                    rows += 1;
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(rows, cfg.image_side(), "{what}");

                // One byte less is refused up front, naming the plan's size.
                let mut small = AlignedBytes::zeroed(n - 1);
                match Generator::new(model, opts, sched.clone(), small.as_bytes_mut()) {
                    Err(Error::ArenaTooSmall { needed, given }) => {
                        assert_eq!((needed, given), (n, n - 1), "{what}");
                    }
                    Err(e) => panic!("{what}: {e}"),
                    Ok(_) => panic!("{what}: an arena one byte short was accepted"),
                }
            }
            // Without guidance only one row is planned, and the plan shrinks.
            let mut off = guided(1, Attention::Causal, 0);
            off.guidance = Guidance::Off;
            let p1 = Plan::new(cfg, &off, sched).unwrap();
            let p2 = Plan::new(cfg, &guided(1, Attention::Causal, 0), sched).unwrap();
            assert_eq!(p1.rows, 1);
            assert_eq!(2 * p1.kv_cache_bytes, p2.kv_cache_bytes);
            assert!(p1.arena_bytes() < p2.arena_bytes());
            assert!(run_full(model, off, sched).is_ok());
        },
    );
}

#[test]
fn misaligned_arena_is_refused() {
    with_model(SIX, WeightFormat::F32, |model| {
        let sched = Schedule::full(&model.config);
        let opts = guided(0, Attention::Markov, 0);
        let n = Plan::new(&model.config, &opts, &sched)
            .unwrap()
            .arena_bytes();
        let mut buf = AlignedBytes::zeroed(n + 64);
        for off in [1usize, 4, 8] {
            let r = Generator::new(
                model,
                opts,
                sched.clone(),
                &mut buf.as_bytes_mut()[off..off + n],
            );
            assert!(
                matches!(r, Err(Error::Misaligned { needed: 16 })),
                "offset {off}"
            );
        }
        assert!(Generator::new(
            model,
            opts,
            sched.clone(),
            &mut buf.as_bytes_mut()[16..16 + n]
        )
        .is_ok());
    });
}

#[test]
fn arena_contents_do_not_matter() {
    // Every kernel writes before it reads: a NaN-filled arena gives the same run bit for bit.
    with_each_model(
        &[(SIX, WeightFormat::F32), (SIX, WeightFormat::Int8)],
        |_, w, model, sched| {
            for attention in [Attention::Markov, Attention::Causal] {
                let opts = guided(2, attention, 5);
                let clean = run_full(model, opts, sched).unwrap();
                let n = Plan::new(&model.config, &opts, sched)
                    .unwrap()
                    .arena_bytes();
                let mut arena = AlignedBytes::zeroed(n);
                arena.as_bytes_mut().fill(0xFF);
                let mut gen =
                    Generator::new(model, opts, sched.clone(), arena.as_bytes_mut()).unwrap();
                let out = run_recorded(&mut gen).unwrap();
                assert_eq!(out.tokens, clean.tokens, "{w:?} {attention:?}");
                // Read after decoding: decoding must leave `f_hat` alone.
                assert_eq!(bits(gen.f_hat()), bits(&clean.f_hat), "{w:?} {attention:?}");
                assert_eq!(bits(&out.image), bits(&clean.image), "{w:?} {attention:?}");
            }
        },
    );
}

#[test]
fn threads_give_the_same_bits() {
    // `Generator::with_parallel` on two threads must reproduce the sequential run exactly, and so
    // must the tokenizer.
    let threads = StdThreads(2);
    with_each_model(
        &[
            (SIX, WeightFormat::F32),
            (SIX, WeightFormat::Int8),
            (SIX, WeightFormat::F16),
            (OFFICIAL, WeightFormat::Int8),
        ],
        |fixture, w, model, sched| {
            let opts = guided(2, Attention::Causal, 9);
            let seq = run_full(model, opts, sched).unwrap();
            let n = Plan::new(&model.config, &opts, sched)
                .unwrap()
                .arena_bytes();
            let mut arena = AlignedBytes::zeroed(n);
            let mut gen = Generator::with_parallel(
                model,
                opts,
                sched.clone(),
                arena.as_bytes_mut(),
                &threads,
            )
            .unwrap();
            let par = run_recorded(&mut gen).unwrap();
            let what = format!("{fixture} {w:?}");
            assert_eq!(par.tokens, seq.tokens, "{what}");
            assert_eq!(
                par.logits.iter().map(|l| bits(l)).collect::<Vec<_>>(),
                seq.logits.iter().map(|l| bits(l)).collect::<Vec<_>>(),
                "{what}"
            );
            assert_eq!(bits(&par.image), bits(&seq.image), "{what}");

            let image = test_image(model.config.image_side(), 1.1);
            let mut outs = Vec::new();
            for par in [&Sequential as &dyn srdd_core::parallel::Parallel, &threads] {
                let mut arena = AlignedBytes::zeroed(tokenize_bytes(model, sched));
                let t = tokenize_image(model, sched, &image, arena.as_bytes_mut(), par).unwrap();
                outs.push((t.tokens, bits(&t.f), bits(&t.f_hat)));
            }
            assert!(
                outs[0] == outs[1],
                "{what}: tokenizer differs on two threads"
            );
        },
    );
}

// ---- Options and state ----

#[test]
fn options_are_validated() {
    with_model(SIX, WeightFormat::F32, |model| {
        let cfg = &model.config;
        let nc = cfg.var.num_classes;
        let v = cfg.vae.vocab_size;
        let sched = Schedule::full(cfg);
        let base = guided(0, Attention::Markov, 0);
        let check = |o: SampleOptions, want: Option<Error>| {
            let plan = Plan::new(cfg, &o, &sched).err();
            let mut arena = AlignedBytes::zeroed(1 << 20);
            let gen = Generator::new(model, o, sched.clone(), arena.as_bytes_mut()).err();
            assert_eq!(plan, want, "Plan::new({o:?})");
            assert_eq!(gen, want, "Generator::new({o:?})");
        };
        let bad = |what| Some(Error::BadOption(what));
        check(SampleOptions { label: nc, ..base }, None); // the null class
        check(SampleOptions { top_k: v, ..base }, None);
        check(
            SampleOptions {
                top_k: 0,
                top_p: 1.0,
                ..base
            },
            None,
        );
        check(SampleOptions { cfg: 0.0, ..base }, None);
        check(
            SampleOptions {
                label: nc + 1,
                ..base
            },
            Some(Error::ClassOutOfRange {
                label: nc + 1,
                num_classes: nc,
            }),
        );
        check(
            SampleOptions {
                label: u32::MAX,
                ..base
            },
            Some(Error::ClassOutOfRange {
                label: u32::MAX,
                num_classes: nc,
            }),
        );
        check(
            SampleOptions {
                top_k: v + 1,
                ..base
            },
            bad("top-k exceeds the vocabulary size"),
        );
        // The official default top-k of 900 exceeds these tiny vocabularies.
        check(
            SampleOptions::new(0),
            bad("top-k exceeds the vocabulary size"),
        );
        let top_p = bad("top-p must be in [0, 1]");
        check(SampleOptions { top_p: 1.5, ..base }, top_p);
        check(
            SampleOptions {
                top_p: -0.1,
                ..base
            },
            top_p,
        );
        check(
            SampleOptions {
                top_p: f32::NAN,
                ..base
            },
            top_p,
        );
        let cfg_err = bad("cfg must be a finite value in [0, 1000]");
        check(
            SampleOptions {
                cfg: f32::NAN,
                ..base
            },
            cfg_err,
        );
        check(
            SampleOptions {
                cfg: f32::INFINITY,
                ..base
            },
            cfg_err,
        );
        check(SampleOptions { cfg: -1.0, ..base }, cfg_err);
        let temp = bad("temperature must be finite and > 0");
        check(
            SampleOptions {
                temperature: 0.0,
                ..base
            },
            temp,
        );
        check(
            SampleOptions {
                temperature: -1.0,
                ..base
            },
            temp,
        );
        check(
            SampleOptions {
                temperature: f32::NAN,
                ..base
            },
            temp,
        );
        check(
            SampleOptions {
                temperature: f32::INFINITY,
                ..base
            },
            temp,
        );
    });
}

#[test]
fn schedules_are_validated() {
    with_model(OFFICIAL, WeightFormat::F32, |model| {
        let cfg = &model.config;
        let s = Schedule::subset(cfg, &[1, 3, 5, 8, 13, 16]).unwrap();
        assert_eq!(s.level.as_slice(), &[0, 2, 4, 6, 8, 9]);
        assert_eq!(s.phi.as_slice(), &[0, 0, 1, 2, 3, 3]);
        assert_eq!(s.total_tokens(), 1 + 9 + 25 + 64 + 169 + 256);
        assert_eq!(
            Schedule::subset(cfg, cfg.patch_nums.as_slice()).unwrap(),
            Schedule::full(cfg)
        );
        assert_eq!(
            Schedule::full(cfg).phi.as_slice(),
            &[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
        );
        let bad = |pns: &[u16]| match Schedule::subset(cfg, pns) {
            Err(Error::BadSchedule(_)) => {}
            other => panic!("{pns:?}: {other:?}"),
        };
        bad(&[1, 7, 16]); // 7 is not a model scale
        bad(&[1, 3, 13]); // does not end at the latent side
        bad(&[1, 5, 3, 16]); // not increasing
        bad(&[]);
        // A hand-built schedule must use the level of its patch size.
        assert!(matches!(
            Schedule::with_tables(cfg, &[1, 3, 16], &[0, 1, 9], &[0, 1, 3]),
            Err(Error::BadSchedule(_))
        ));
        assert!(matches!(
            Schedule::with_tables(cfg, &[1, 3, 16], &[0, 2, 9], &[0, 1, 4]),
            Err(Error::BadSchedule(_))
        ));
        // The distilled schedule samples end to end.
        let out = run_full(model, greedy(1, Attention::Markov), &s).unwrap();
        let sizes: Vec<usize> = out.tokens.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 9, 25, 64, 169, 256]);
    });
}

struct ForceToken(u32);
impl StepHook for ForceToken {
    fn force(&mut self, k: usize, _pn: usize, tokens: &mut [u32]) {
        if k == 1 {
            tokens[0] = self.0;
        }
    }
}

#[test]
fn generator_state_errors() {
    with_model(SIX, WeightFormat::F32, |model| {
        let cfg = &model.config;
        let v = cfg.vae.vocab_size;
        let sched = Schedule::full(cfg);
        let opts = greedy(0, Attention::Causal);
        let n = Plan::new(cfg, &opts, &sched).unwrap().arena_bytes();
        let mut arena = AlignedBytes::zeroed(n);
        let mut gen = Generator::new(model, opts, sched.clone(), arena.as_bytes_mut()).unwrap();
        assert_eq!(
            gen.decode(&mut |_, _| {}),
            Err(Error::WrongState("decode before the last scale"))
        );
        gen.step(&mut NoHook).unwrap();
        assert_eq!(
            gen.step(&mut ForceToken(v)),
            Err(Error::TokenOutOfRange { token: v, vocab: v })
        );
        let mut arena = AlignedBytes::zeroed(n);
        let mut gen = Generator::new(model, opts, sched.clone(), arena.as_bytes_mut()).unwrap();
        gen.run(&mut ForceToken(v - 1)).unwrap();
        assert!(gen.finished());
        assert_eq!(gen.steps_done(), sched.len());
        assert_eq!(
            gen.step(&mut NoHook),
            Err(Error::WrongState("all scales already sampled"))
        );
        gen.decode(&mut |_, _| {}).unwrap();
    });
}

// ---- Determinism and attention ----

#[test]
fn sampling_is_deterministic_per_seed() {
    with_each_model(
        &[
            (SIX, WeightFormat::F32),
            (SIX, WeightFormat::Int8),
            (OFFICIAL, WeightFormat::F32),
        ],
        |fixture, w, model, sched| {
            for attention in [Attention::Markov, Attention::Causal] {
                let what = format!("{fixture} {w:?} {attention:?}");
                let a = run_full(model, guided(3, attention, 42), sched).unwrap();
                let b = run_full(model, guided(3, attention, 42), sched).unwrap();
                assert_eq!(a.tokens, b.tokens, "{what}");
                assert_eq!(bits(&a.f_hat), bits(&b.f_hat), "{what}");
                assert_eq!(bits(&a.image), bits(&b.image), "{what}");
                let c = run_full(model, guided(3, attention, 43), sched).unwrap();
                let d = run_full(model, guided(3, attention, 44), sched).unwrap();
                for ((x, sx), (y, sy)) in [
                    ((&a, 42), (&c, 43)),
                    ((&a, 42), (&d, 44)),
                    ((&c, 43), (&d, 44)),
                ] {
                    assert_ne!(
                        x.tokens, y.tokens,
                        "{what}: seeds {sx} and {sy} sampled the same tokens"
                    );
                }
                // Non-greedy: the sampled tokens are not all the guided argmax.
                let g = run_full(model, greedy(3, attention), sched).unwrap();
                assert_ne!(
                    a.tokens, g.tokens,
                    "{what}: seed 42 sampled the greedy tokens"
                );
            }
        },
    );
}

/// The largest `|a[i] - b[i]|`.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn markov_and_causal_differ_after_the_first_scale() {
    with_each_model(
        &[
            (SIX, WeightFormat::F32),
            (OFFICIAL, WeightFormat::F32),
            (OFFICIAL, WeightFormat::Int8),
        ],
        |fixture, w, model, sched| {
            let m = run_full(model, greedy(3, Attention::Markov), sched).unwrap();
            let c = run_full(model, greedy(3, Attention::Causal), sched).unwrap();
            let what = format!("{fixture} {w:?}");
            assert_eq!(m.tokens[0], c.tokens[0], "{what}: first-scale token");
            // Scale 0 sees only itself under both masks.
            let d0 = max_abs_diff(&m.logits[0], &c.logits[0]);
            assert!(d0 <= 1e-5, "{what}: step-0 logits differ by {d0}");
            // Scale 1 already attends to scale 0 under the causal mask only (its input is the
            // same: both runs chose the same first token).
            let d1 = max_abs_diff(&m.logits[1], &c.logits[1]);
            assert!(
                d1 > 1e-3,
                "{what}: step-1 logits agree to {d1}: the masks made no difference"
            );
            assert_ne!(m.tokens, c.tokens, "{what}");
        },
    );
}

// ---- Tokenizer ----

fn test_image(side: usize, phase: f32) -> Vec<f32> {
    (0..3 * side * side)
        .map(|i| {
            let (ch, y, x) = (i / (side * side), (i / side) % side, i % side);
            let v = (x as f32 * 0.31 + phase).sin() * (y as f32 * 0.17 + ch as f32).cos()
                + 0.2 * ((x * y) as f32 * 0.05).sin();
            v.clamp(-1.0, 1.0)
        })
        .collect()
}

#[test]
fn tokenize_then_fhat_from_tokens_is_bit_exact() {
    let cases: [(&str, &[u16]); 3] = [
        (SIX, &[]),
        (SIX, &[1, 3, 8]),
        (OFFICIAL, &[1, 3, 5, 8, 13, 16]),
    ];
    for (fixture, subset) in cases {
        for w in [WeightFormat::F32, WeightFormat::Int8] {
            with_model(fixture, w, |model| {
                let cfg = &model.config;
                let sched = if subset.is_empty() {
                    Schedule::full(cfg)
                } else {
                    Schedule::subset(cfg, subset).unwrap()
                };
                let what = format!("{fixture} {w:?} {:?}", sched.pn);
                let cv = cfg.vae.cvae as usize;
                let p = cfg.latent_side();
                let image = test_image(cfg.image_side(), 0.4);
                let mut arena = AlignedBytes::zeroed(tokenize_bytes(model, &sched));
                let Tokenized {
                    tokens: toks,
                    f_hat,
                    ..
                } = tokenize_image(model, &sched, &image, arena.as_bytes_mut(), &Sequential)
                    .unwrap();
                assert!(f_hat.iter().all(|v| v.is_finite()), "{what}");
                assert!(toks.iter().all(|&t| t < cfg.vae.vocab_size), "{what}");
                let distinct: std::collections::BTreeSet<u32> = toks.iter().copied().collect();
                assert!(distinct.len() > 3, "{what}: degenerate tokens {distinct:?}");
                arena.as_bytes_mut().fill(0xFF);
                let mut again = vec![f32::NAN; cv * p * p];
                fhat_from_tokens(
                    model,
                    &sched,
                    &toks,
                    arena.as_bytes_mut(),
                    &mut again,
                    &Sequential,
                )
                .unwrap();
                assert_eq!(bits(&again), bits(&f_hat), "{what}");
                // The sampler's accumulation is the same computation: forcing the tokens gives the
                // same f_hat.
                struct Force<'t>(&'t [u32], usize);
                impl StepHook for Force<'_> {
                    fn force(&mut self, _k: usize, pn: usize, t: &mut [u32]) {
                        t.copy_from_slice(&self.0[self.1..self.1 + pn * pn]);
                        self.1 += pn * pn;
                    }
                }
                let opts = greedy(0, Attention::Markov);
                let plan = Plan::new(cfg, &opts, &sched).unwrap();
                let mut ga = AlignedBytes::zeroed(plan.arena_bytes());
                let mut gen =
                    Generator::new(model, opts, sched.clone(), ga.as_bytes_mut()).unwrap();
                gen.run(&mut Force(&toks, 0)).unwrap();
                assert_eq!(bits(gen.f_hat()), bits(&f_hat), "{what}: generator f_hat");
                // Wrong inputs are typed errors.
                let mut bad = toks.clone();
                bad[0] = cfg.vae.vocab_size;
                assert_eq!(
                    fhat_from_tokens(
                        model,
                        &sched,
                        &bad,
                        arena.as_bytes_mut(),
                        &mut again,
                        &Sequential
                    ),
                    Err(Error::TokenOutOfRange {
                        token: cfg.vae.vocab_size,
                        vocab: cfg.vae.vocab_size
                    })
                );
                assert!(matches!(
                    fhat_from_tokens(
                        model,
                        &sched,
                        &toks[1..],
                        arena.as_bytes_mut(),
                        &mut again,
                        &Sequential
                    ),
                    Err(Error::BadLength { .. })
                ));
            });
        }
    }
}

// ---- Sampler statistics ----

/// Records the token and the conditional logits of step 0.
#[derive(Default)]
struct First {
    logits: Vec<f32>,
    token: Option<u32>,
}
impl StepHook for First {
    fn logits(&mut self, k: usize, t: usize, cond: &[f32]) {
        assert_eq!((k, t), (0, 0));
        self.logits = cond.to_vec();
    }
    fn scale_done(&mut self, _k: usize, tokens: &[u32], _f: &[f32]) {
        self.token = Some(tokens[0]);
    }
}

/// Draws `n` first-step tokens with seeds `0..n`; returns the counts and the step-0 logits.
fn first_step_counts(model: &Model<'_>, opts: SampleOptions, n: u64) -> (Vec<u64>, Vec<f32>) {
    let sched = Schedule::full(&model.config);
    let plan = Plan::new(&model.config, &opts, &sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut counts = vec![0u64; model.config.vae.vocab_size as usize];
    let mut logits: Option<Vec<f32>> = None;
    for seed in 0..n {
        let mut gen = Generator::new(
            model,
            SampleOptions { seed, ..opts },
            sched.clone(),
            arena.as_bytes_mut(),
        )
        .unwrap();
        let mut h = First::default();
        gen.step(&mut h).unwrap();
        assert_eq!(gen.steps_done(), 1);
        counts[h.token.unwrap() as usize] += 1;
        match &logits {
            None => logits = Some(h.logits),
            Some(l) => assert_eq!(
                bits(l),
                bits(&h.logits),
                "seed {seed}: step-0 logits depend on the seed"
            ),
        }
    }
    (counts, logits.unwrap())
}

fn softmax64(l: &[f32], temperature: f64) -> Vec<f64> {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
    let e: Vec<f64> = l
        .iter()
        .map(|v| ((*v as f64 - m) / temperature).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Pearson chi-square of `counts` against `probs`, pooling tokens expected fewer than 5 times;
/// returns (statistic, degrees of freedom). Counts on zero-probability tokens are an error.
fn chi_square(counts: &[u64], probs: &[f64]) -> (f64, usize) {
    let n: u64 = counts.iter().sum();
    let (mut stat, mut bins) = (0.0, 0usize);
    let (mut pool_o, mut pool_e) = (0f64, 0f64);
    for (&o, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p == 0.0 {
            assert_eq!(o, 0, "a token outside the filtered support was drawn");
        } else if e >= 5.0 {
            stat += (o as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pool_o += o as f64;
            pool_e += e;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e;
        bins += 1;
    }
    (stat, bins - 1)
}

/// A fixed acceptance threshold: mean + 6 standard deviations of the chi-square distribution
/// (a false alarm rate far below 1e-6; the seeds are fixed, so the outcome is too).
fn threshold(df: usize) -> f64 {
    df as f64 + 6.0 * (2.0 * df as f64).sqrt()
}

fn unguided(top_k: u32, top_p: f32, temperature: f32) -> SampleOptions {
    SampleOptions {
        label: 3,
        cfg: 0.0,
        guidance: Guidance::Off,
        top_k,
        top_p,
        temperature,
        seed: 0,
        attention: Attention::Markov,
        ..SampleOptions::new(3)
    }
}

#[test]
fn first_step_samples_follow_the_softmax() {
    with_model(SIX, WeightFormat::F32, |model| {
        let (counts, logits) = first_step_counts(model, unguided(0, 0.0, 1.0), 4000);
        let p = softmax64(&logits, 1.0);
        let (stat, df) = chi_square(&counts, &p);
        println!(
            "unfiltered: chi2 {stat:.1} on {df} df (threshold {:.1})",
            threshold(df)
        );
        assert!(
            df >= 8,
            "too few probable tokens ({df} df) for a meaningful test"
        );
        assert!(stat < threshold(df), "chi2 {stat:.1} on {df} df");
        // The test has power: the same counts reject a softmax at temperature 1.25 and one
        // shifted by a single token.
        let (hot, dfh) = chi_square(&counts, &softmax64(&logits, 1.25));
        assert!(
            hot > threshold(dfh),
            "temperature 1.25 not rejected: {hot:.1} on {dfh}"
        );
        let mut shifted = p.clone();
        shifted.rotate_right(1);
        let (s, d) = chi_square(&counts, &shifted);
        assert!(
            s > threshold(d),
            "an off-by-one distribution was not rejected: {s:.1} on {d}"
        );
    });
}

#[test]
fn first_step_samples_follow_temperature_and_top_k() {
    with_model(SIX, WeightFormat::F32, |model| {
        let (k, t) = (12u32, 0.7f32);
        let (counts, logits) = first_step_counts(model, unguided(k, 0.0, t), 4000);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let tau = logits[order[k as usize - 1]];
        let kept: Vec<f32> = logits
            .iter()
            .map(|&l| if l >= tau { l } else { f32::NEG_INFINITY })
            .collect();
        assert_eq!(
            kept.iter().filter(|l| l.is_finite()).count(),
            k as usize,
            "ties at the k-th logit"
        );
        let p = softmax64(&kept, t as f64);
        let (stat, df) = chi_square(&counts, &p);
        println!(
            "top-k {k}, temperature {t}: chi2 {stat:.1} on {df} df (threshold {:.1})",
            threshold(df)
        );
        assert!(df >= 4, "{df} df");
        assert!(stat < threshold(df), "chi2 {stat:.1} on {df} df");
    });
}

#[test]
fn first_step_samples_follow_top_p() {
    with_model(SIX, WeightFormat::F32, |model| {
        let top_p = 0.9f32;
        let (counts, logits) = first_step_counts(model, unguided(0, top_p, 1.0), 4000);
        // Official semantics: keep a token iff the mass ranked strictly above it is < top_p.
        let p = softmax64(&logits, 1.0);
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let mut keep = vec![false; p.len()];
        let mut above = 0.0;
        for &i in &order {
            if above >= top_p as f64 {
                break;
            }
            assert!(
                (above - top_p as f64).abs() > 1e-4,
                "nucleus boundary too close to call"
            );
            keep[i] = true;
            above += p[i];
        }
        let kept: Vec<f32> = logits
            .iter()
            .zip(&keep)
            .map(|(&l, &k)| if k { l } else { f32::NEG_INFINITY })
            .collect();
        let q = softmax64(&kept, 1.0);
        let (stat, df) = chi_square(&counts, &q);
        println!(
            "top-p {top_p}: {} tokens kept, chi2 {stat:.1} on {df} df (threshold {:.1})",
            keep.iter().filter(|k| **k).count(),
            threshold(df)
        );
        assert!(df >= 6, "{df} df");
        assert!(stat < threshold(df), "chi2 {stat:.1} on {df} df");
    });
}
