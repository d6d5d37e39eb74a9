//! The row-band VQVAE decoder: bit-identical to the whole-image decoder for every band height and
//! weight format, rows handed over in order, exact scratch sizes, option validation; and the
//! GroupNorm kernel both decoders share against a plain f64 reference.

mod common;

use common::{bits, d16_config, with_model, OFFICIAL, SIX};
use srdd_core::config::Attention;
use srdd_core::kernels::group_norm;
use srdd_core::parallel::{Parallel, Sequential, StdThreads};
use srdd_core::weights::Norm;
use srdd_core::{vae, Error, Model, ModelConfig, WeightFormat};
use srdd_tools::parity::decode_in;
use std::time::Instant;

/// A fixed pseudo-random latent with roughly the spread of a sampled one.
fn f_hat_of(cfg: &ModelConfig) -> Vec<f32> {
    let p = cfg.latent_side();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..cfg.vae.cvae as usize * p * p)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Decodes with exactly `decoder_scratch_bytes(cfg, band_rows)` bytes; returns the rows (in the
/// order the sink saw them) and checks they came as 0..H, once each.
fn decode_rows(
    model: &Model<'_>,
    f_hat: &[f32],
    band_rows: usize,
    clamp: bool,
    par: &dyn Parallel,
) -> Vec<f32> {
    let cfg = &model.config;
    let side = cfg.image_side();
    let mut seen = Vec::new();
    let mut img = Vec::new();
    let scratch = vae::decoder_scratch_bytes(cfg, band_rows);
    decode_in(
        model,
        f_hat,
        scratch,
        clamp,
        band_rows,
        par,
        &mut |y, row| {
            assert_eq!(row.len(), 3 * side);
            seen.push(y);
            img.extend_from_slice(row);
        },
    )
    .unwrap_or_else(|e| panic!("band_rows {band_rows}: {e}"));
    assert_eq!(seen, (0..side).collect::<Vec<_>>(), "band_rows {band_rows}");
    img
}

fn band_sizes(side: usize) -> [usize; 6] {
    [1, 2, 3, 5, 8, side]
}

#[test]
fn banded_decode_is_bit_identical_to_whole() {
    for fixture in [SIX, OFFICIAL] {
        for w in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Int8] {
            with_model(fixture, w, |model| {
                let cfg = &model.config;
                let f_hat = f_hat_of(cfg);
                let whole = decode_rows(model, &f_hat, 0, false, &Sequential);
                assert!(whole.iter().all(|v| v.is_finite()));
                for b in band_sizes(cfg.image_side()) {
                    let banded = decode_rows(model, &f_hat, b, false, &Sequential);
                    assert!(
                        bits(&banded) == bits(&whole),
                        "{fixture} {w:?} band_rows {b}: banded output differs from whole"
                    );
                }
                // Threads and clamping change nothing either.
                let threaded = decode_rows(model, &f_hat, 3, true, &StdThreads(3));
                let clamped = decode_rows(model, &f_hat, 0, true, &Sequential);
                assert!(
                    bits(&threaded) == bits(&clamped),
                    "{fixture} {w:?} threaded"
                );
            });
        }
    }
}

#[test]
fn banded_decode_of_a_sampled_latent_matches() {
    with_model(OFFICIAL, WeightFormat::F32, |model| {
        let sched = srdd_core::Schedule::full(&model.config);
        let opts = srdd_core::SampleOptions {
            label: 3,
            cfg: 1.5,
            guidance: srdd_core::Guidance::Linear,
            top_k: 100,
            top_p: 0.96,
            temperature: 1.0,
            seed: 7,
            attention: Attention::Markov,
            ..srdd_core::SampleOptions::new(3)
        };
        let run = common::run_full(model, opts, &sched).unwrap();
        // Through the generator: the plan's band option gives the same image in fewer bytes
        // (run_full uses exactly the planned bytes).
        for band_rows in [1u16, 3] {
            let small = srdd_core::SampleOptions {
                band_rows,
                chunk: 4,
                ..opts
            };
            let banded = common::run_full(model, small, &sched).unwrap();
            assert!(
                bits(&banded.image) == bits(&run.image),
                "band_rows {band_rows}"
            );
            let a = srdd_core::Plan::new(&model.config, &small, &sched).unwrap();
            let b = srdd_core::Plan::new(&model.config, &opts, &sched).unwrap();
            assert!(a.arena_bytes() < b.arena_bytes());
        }
        let too_tall = srdd_core::SampleOptions {
            band_rows: model.config.image_side() as u16 + 1,
            ..opts
        };
        assert!(matches!(
            srdd_core::Plan::new(&model.config, &too_tall, &sched),
            Err(srdd_core::Error::BadOption(_))
        ));
        let whole = decode_rows(model, &run.f_hat, 0, true, &Sequential);
        assert!(bits(&whole) == bits(&run.image));
        for b in [1, 4, 7] {
            let banded = decode_rows(model, &run.f_hat, b, true, &Sequential);
            assert!(bits(&banded) == bits(&whole), "band_rows {b}");
        }
    });
}

/// Exactly `decoder_scratch_bytes(cfg, b)` decodes, one byte less is `ArenaTooSmall`, for the
/// whole-image decoder (`b = 0`) and every band height.
#[test]
fn decoder_scratch_is_exact() {
    for fixture in [SIX, OFFICIAL] {
        for w in [WeightFormat::F32, WeightFormat::Int8] {
            with_model(fixture, w, |model| {
                let cfg = &model.config;
                let f_hat = f_hat_of(cfg);
                let whole = vae::decoder_scratch_bytes(cfg, 0);
                for b in std::iter::once(0).chain(band_sizes(cfg.image_side())) {
                    let n = vae::decoder_scratch_bytes(cfg, b);
                    // Exactly n bytes work (decode_rows uses exactly n) ...
                    decode_rows(model, &f_hat, b, true, &Sequential);
                    // ... one byte less is refused without a panic.
                    let r = decode_in(model, &f_hat, n - 1, true, b, &Sequential, &mut |_, _| {});
                    assert!(
                        matches!(r, Err(Error::ArenaTooSmall { .. })),
                        "{fixture} {w:?} band_rows {b}: {r:?}"
                    );
                }
                // Narrower bands never need more, and single rows need less than the whole image.
                let sizes: Vec<usize> = (1..=cfg.image_side())
                    .map(|b| vae::decoder_scratch_bytes(cfg, b))
                    .collect();
                assert!(sizes.windows(2).all(|s| s[0] <= s[1]), "{sizes:?}");
                assert!(sizes[0] < whole, "{fixture} {w:?}: {} >= {whole}", sizes[0]);
                // The listing inspect prints comes from the same tables: whole-image rows sum to
                // the scratch; banded rows overlay (latent part, then streamed part), so they sum
                // to at least the scratch.
                let listed =
                    |b| -> usize { vae::decoder_buffers(cfg, b).iter().map(|r| r.1).sum() };
                assert_eq!(listed(0), whole, "{fixture} {w:?}");
                for b in band_sizes(cfg.image_side()) {
                    assert!(
                        listed(b) >= vae::decoder_scratch_bytes(cfg, b),
                        "{fixture} band {b}"
                    );
                }
            });
        }
    }
}

#[test]
fn band_rows_out_of_range_is_refused() {
    with_model(SIX, WeightFormat::F32, |model| {
        let cfg = &model.config;
        let f_hat = f_hat_of(cfg);
        let side = cfg.image_side();
        for b in [side + 1, usize::MAX] {
            let mut rows = 0;
            let scratch = vae::decoder_scratch_bytes(cfg, 0);
            let r = decode_in(model, &f_hat, scratch, true, b, &Sequential, &mut |_, _| {
                rows += 1
            });
            assert!(matches!(r, Err(Error::BadOption(_))), "{b}: {r:?}");
            assert_eq!(rows, 0);
            assert_eq!(
                vae::decoder_scratch_bytes(cfg, b),
                vae::decoder_scratch_bytes(cfg, 0)
            );
        }
    });
}

#[test]
fn group_norm_matches_an_f64_reference() {
    let (c, hw, groups, eps) = (12usize, 37usize, 4usize, 1e-6f32);
    let x: Vec<f32> = (0..c * hw)
        .map(|i| (i as f32 * 0.731).sin() * 3.0 + (i / hw) as f32 * 0.5 + 10.0)
        .collect();
    let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
    let b: Vec<f32> = (0..c).map(|i| i as f32 * 0.03 - 0.2).collect();
    let norm = Norm { w: &w, b: &b };
    /// Three threads that split even the smallest work (GroupNorm splits over groups).
    struct Eager;
    impl Parallel for Eager {
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            StdThreads(3).run(n, f)
        }
        fn width(&self) -> usize {
            3
        }
        fn min_task_floats(&self) -> usize {
            1
        }
    }
    for silu in [false, true] {
        let mut y = vec![0f32; c * hw];
        group_norm(&x, &mut y, c, hw, groups, eps, &norm, silu, &Sequential);
        let mut y3 = vec![0f32; c * hw];
        group_norm(&x, &mut y3, c, hw, groups, eps, &norm, silu, &Eager);
        assert_eq!(bits(&y), bits(&y3), "threads change no bit");
        let cg = c / groups;
        for g in 0..groups {
            let xs = &x[g * cg * hw..(g + 1) * cg * hw];
            let n = xs.len() as f64;
            let mean = xs.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = xs.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
            for ci in g * cg..(g + 1) * cg {
                for i in 0..hw {
                    let t = (x[ci * hw + i] as f64 - mean) / (var + eps as f64).sqrt()
                        * w[ci] as f64
                        + b[ci] as f64;
                    let r = if silu { t / (1.0 + (-t).exp()) } else { t };
                    let got = y[ci * hw + i] as f64;
                    assert!(
                        (got - r).abs() <= 2e-6 * (1.0 + r.abs()),
                        "silu {silu} c {ci} i {i}: {got} vs {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn d16_band_decoder_scratch_shrinks() {
    let cfg = d16_config();
    assert_eq!(cfg.image_side(), 256);
    let whole = vae::decoder_scratch_bytes(&cfg, 0);
    let b1 = vae::decoder_scratch_bytes(&cfg, 1);
    let b4 = vae::decoder_scratch_bytes(&cfg, 4);
    assert!(b1 < b4 && b4 < whole / 5, "{whole} {b1} {b4}");
}

/// Figures for docs/EMBEDDED.md:
/// `cargo test --release -p srdd-tests --test band_decoder -- --ignored --nocapture`.
#[test]
#[ignore]
fn band_decoder_figures() {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let cfg = d16_config();
    for b in [0usize, 1, 2, 4, 8, 16] {
        let n = vae::decoder_scratch_bytes(&cfg, b);
        println!(
            "d16 256px int8 band_rows {b:>2}: {n:>11} B ({:.2} MiB)",
            mib(n)
        );
    }
    for fixture in [SIX, OFFICIAL] {
        for w in [WeightFormat::F32, WeightFormat::Int8] {
            with_model(fixture, w, |model| {
                let cfg = &model.config;
                let f_hat = f_hat_of(cfg);
                for b in [0usize, 1, 2, 4, 8] {
                    let n = vae::decoder_scratch_bytes(cfg, b);
                    decode_rows(model, &f_hat, b, true, &Sequential);
                    let reps = 5;
                    let t = Instant::now();
                    for _ in 0..reps {
                        decode_rows(model, &f_hat, b, true, &Sequential);
                    }
                    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
                    println!(
                        "{fixture} {w:?} band_rows {b}: scratch {n:>9} B ({:.3} MiB), \
                         decode {ms:.1} ms (one thread)",
                        mib(n)
                    );
                }
            });
        }
    }
}
