//! The Rust emoji32 classifier against PyTorch's features and logits (golden from
//! `tools/tests/data/classifier/make_golden.py`), its errors on a wrong checkpoint, and the
//! Fréchet distance on sets with known answers.

use serde_json::Value;
use srdd_tools::classifier::{
    committed_classifier, frechet_distance, mean_cov, sym_eigen, Classifier, ClassifierError,
};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The 32×32 tile (row, col) of the committed sample grid (2-pixel gaps).
fn tile(grid: &srdd::Image, r: usize, c: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 * 32 * 3);
    for y in 34 * r..34 * r + 32 {
        let at = (y * grid.width + 34 * c) * 3;
        out.extend_from_slice(&grid.rgb[at..at + 32 * 3]);
    }
    out
}

#[test]
fn matches_pytorch_golden() {
    let golden: Value = serde_json::from_slice(
        &std::fs::read(root().join("tools/tests/data/classifier/golden.json")).unwrap(),
    )
    .unwrap();
    let grid = srdd::read_png_rgb(&root().join("tools/tests/data/classifier/grid.png")).unwrap();
    let m = Classifier::load(&committed_classifier()).unwrap();
    assert_eq!(m.classes(), 9);
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut worst = 0f64;
    for case in cases {
        let t = case["tile"].as_array().unwrap();
        let img = tile(
            &grid,
            t[0].as_u64().unwrap() as usize,
            t[1].as_u64().unwrap() as usize,
        );
        // The same pixels as PyTorch saw.
        let sum: u64 = img.iter().map(|v| *v as u64).sum();
        assert_eq!(sum, case["rgb_sum"].as_u64().unwrap());
        let (feats, logits) = m.forward(&img).unwrap();
        for (key, ours) in [("features", &feats), ("logits", &logits)] {
            let theirs: Vec<f64> = case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(ours.len(), theirs.len(), "{key}");
            for (a, b) in ours.iter().zip(&theirs) {
                let d = (*a as f64 - b).abs();
                worst = worst.max(d);
                // f32 with another summation order than PyTorch's.
                assert!(d <= 1e-4 + 1e-4 * b.abs(), "{key}: {a} vs {b}");
            }
        }
        let argmax = |v: &[f64]| {
            srdd_tools::classifier::argmax(&v.iter().map(|x| *x as f32).collect::<Vec<_>>())
        };
        let theirs: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(srdd_tools::classifier::argmax(&logits), argmax(&theirs));
    }
    eprintln!("max abs diff against PyTorch: {worst:.3e}");
}

#[test]
fn wrong_checkpoint_is_a_one_line_error() {
    let var = root().join("tests/fixtures/tiny-six-scales/var.pth");
    let e = Classifier::load(&var)
        .err()
        .expect("a VAR checkpoint is refused");
    assert!(matches!(e, ClassifierError::Missing(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("not an EmojiClassifier checkpoint"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    let e = Classifier::load(&root().join("docs/QUANTIZATION.md"))
        .err()
        .expect("not a checkpoint");
    assert!(matches!(e, ClassifierError::Checkpoint(_)), "{e}");
    let m = Classifier::load(&committed_classifier()).unwrap();
    let e = m.forward(&[0u8; 16 * 16 * 3]).expect_err("wrong size");
    assert!(matches!(e, ClassifierError::ImageSize { .. }), "{e}");
}

/// A deterministic pseudo-random set (`n` vectors of `d`), values in [−1, 1).
fn set(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        })
        .collect()
}

#[test]
fn frechet_known_answers() {
    // Identical sets: 0.
    let a = set(300, 16, 1);
    let fd = frechet_distance(&a, &a).unwrap();
    assert!(fd.abs() < 1e-9, "{fd}");
    // Also with fewer vectors than dimensions (singular covariances).
    let s = set(10, 32, 3);
    let fd = frechet_distance(&s, &s).unwrap();
    assert!(fd.abs() < 1e-9, "{fd}");
    // Shifted means, same covariance: |Δμ|².
    let shift: Vec<f32> = (0..16).map(|i| 0.25 * i as f32 - 1.0).collect();
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|v| v.iter().zip(&shift).map(|(x, s)| x + s).collect())
        .collect();
    let dmu: f64 = shift.iter().map(|s| (*s as f64).powi(2)).sum();
    let fd = frechet_distance(&a, &b).unwrap();
    assert!((fd - dmu).abs() < 1e-6 * dmu, "{fd} vs {dmu}");
    // Scaled about the mean: Σ₂ = c²Σ₁ (full covariance), FD = (1−c)² tr Σ₁.
    let (mu, cov) = mean_cov(&a).unwrap();
    let c = 3.0f64;
    let b: Vec<Vec<f32>> = a
        .iter()
        .map(|v| {
            v.iter()
                .zip(&mu)
                .map(|(x, m)| (m + c * (*x as f64 - m)) as f32)
                .collect()
        })
        .collect();
    let tr: f64 = (0..16).map(|i| cov[i * 16 + i]).sum();
    let fd = frechet_distance(&a, &b).unwrap();
    let want = (1.0 - c).powi(2) * tr;
    assert!((fd - want).abs() < 1e-5 * want, "{fd} vs {want}");
    // Diagonal covariances: the sets {±aᵢ eᵢ} have mean 0 and covariance diag(2aᵢ²/(2n−1)),
    // so FD = Σ (√(2/(2n−1))·(aᵢ − bᵢ))².
    let axes = |s: &[f32]| -> Vec<Vec<f32>> {
        let n = s.len();
        (0..n)
            .flat_map(|i| {
                [1.0f32, -1.0].map(|sign| {
                    let mut v = vec![0f32; n];
                    v[i] = sign * s[i];
                    v
                })
            })
            .collect()
    };
    let (sa, sb) = ([1.0f32, 2.0, 0.5, 3.0], [2.0f32, 1.0, 0.5, 0.25]);
    let fd = frechet_distance(&axes(&sa), &axes(&sb)).unwrap();
    let want: f64 = sa
        .iter()
        .zip(&sb)
        .map(|(x, y)| 2.0 / 7.0 * (*x as f64 - *y as f64).powi(2))
        .sum();
    assert!((fd - want).abs() < 1e-9, "{fd} vs {want}");
    // Too few vectors, ragged sets.
    assert!(frechet_distance(&a[..1], &a).is_err());
    assert!(frechet_distance(&a, &set(10, 8, 2)).is_err());
}

#[test]
fn jacobi_reconstructs_a_symmetric_matrix() {
    let n = 12;
    let r = set(n, n, 5);
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (r[i][j] + r[j][i]) as f64;
        }
    }
    let (l, v) = sym_eigen(&a, n);
    for i in 0..n {
        for j in 0..n {
            let x: f64 = (0..n).map(|k| v[i * n + k] * l[k] * v[j * n + k]).sum();
            assert!(
                (x - a[i * n + j]).abs() < 1e-10,
                "({i},{j}) {x} vs {}",
                a[i * n + j]
            );
        }
    }
}

#[test]
fn frechet_of_grid_halves_matches_evaluate_py() {
    let golden: Value = serde_json::from_slice(
        &std::fs::read(root().join("tools/tests/data/classifier/golden.json")).unwrap(),
    )
    .unwrap();
    let grid = srdd::read_png_rgb(&root().join("tools/tests/data/classifier/grid.png")).unwrap();
    let m = Classifier::load(&committed_classifier()).unwrap();
    let half = |cols: std::ops::Range<usize>| -> Vec<Vec<f32>> {
        (0..9)
            .flat_map(|r| cols.clone().map(move |c| (r, c)))
            .map(|(r, c)| m.forward(&tile(&grid, r, c)).unwrap().0)
            .collect()
    };
    let fd = frechet_distance(&half(0..4), &half(4..8)).unwrap();
    let want = golden["frechet_columns_0_3_vs_4_7"].as_f64().unwrap();
    eprintln!("Fréchet distance {fd} (evaluate.py {want})");
    // Features within 2e-6 of PyTorch's; numpy's eigvals of the non-symmetric Σ₁Σ₂ against our
    // symmetric form, both in f64.
    assert!((fd - want).abs() < 1e-5 * want, "{fd} vs {want}");
}
