//! The emoji32 classifier (`EmojiClassifier` of `tools/train/train_classifier.py`) in f32, eval
//! mode, and the Fréchet distance between two sets of its penultimate features: the class
//! consistency and feature distance of `docs/MODEL.md`, without PyTorch.
//!
//! Network: three blocks `Conv3×3 → BN → ReLU → Conv3×3 → BN → ReLU` (3→32, 32→64, 64→128
//! channels), a 2×2 max pool after the first two, the spatial mean (128-d features), then
//! `fc` (Linear 128 → classes). Eval mode: each BatchNorm is folded into its convolution from
//! the running statistics (eps 1e-5, PyTorch's default); dropout is the identity.

use crate::checkpoint::{read_state_dict, CheckpointError, Role, StateDict};
use std::path::Path;

/// The committed classifier's class names, in label order (`tools/train/emoji32-classes.txt`).
pub const EMOJI32_CLASSES: &str = include_str!("../train/emoji32-classes.txt");

/// The committed classifier (`tools/train/emoji32-classifier.pt`) at the path this crate was
/// built from; it exists in a source checkout only.
pub fn committed_classifier() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("train/emoji32-classifier.pt")
}

/// The committed class names as the comma-separated list a model's `class_names` holds.
pub fn emoji32_class_names() -> String {
    EMOJI32_CLASSES
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a classifier could not be loaded or run (one line each).
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The file could not be read as a checkpoint.
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    /// A tensor the network needs is absent: not an `EmojiClassifier` state dict.
    #[error("not an EmojiClassifier checkpoint: no tensor {0}")]
    Missing(String),
    /// A tensor has the wrong shape.
    #[error("not an EmojiClassifier checkpoint: {key} has shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An image of the wrong size.
    #[error("classifier input must be {expected}x{expected} RGB ({} bytes), got {found} bytes", expected * expected * 3)]
    ImageSize { expected: usize, found: usize },
}

/// One convolution with its BatchNorm folded in.
struct Conv {
    cin: usize,
    cout: usize,
    /// `[cout][cin][3][3]`.
    w: Vec<f32>,
    b: Vec<f32>,
}

/// The classifier, eval mode.
pub struct Classifier {
    /// `f1.0, f1.3, f2.0, f2.3, f3.0, f3.3` (BN folded).
    convs: Vec<Conv>,
    /// `fc`: `[classes][128]`.
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
    classes: usize,
}

/// Feature width (the penultimate layer).
pub const FEAT_DIM: usize = 128;
/// Input side in pixels.
pub const SIDE: usize = 32;

fn tensor(sd: &StateDict, key: &str, shape: &[usize]) -> Result<Vec<f32>, ClassifierError> {
    let t = sd
        .get(key)
        .ok_or_else(|| ClassifierError::Missing(key.into()))?;
    if t.shape != shape {
        return Err(ClassifierError::Shape {
            key: key.into(),
            expected: shape.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(t.to_f32()?)
}

impl Classifier {
    /// Reads `path` (the `.pt` that `train_classifier.py` saves: `{"state_dict": …, …}`).
    pub fn load(path: &Path) -> Result<Self, ClassifierError> {
        Self::from_state_dict(&read_state_dict(path, Role::Any)?)
    }

    /// Builds the network from an `EmojiClassifier` state dict.
    pub fn from_state_dict(sd: &StateDict) -> Result<Self, ClassifierError> {
        let mut convs = Vec::new();
        for (blk, cin, cout) in [("f1", 3, 32), ("f2", 32, 64), ("f3", 64, 128)] {
            for (conv, bn, ci) in [(0, 1, cin), (3, 4, cout)] {
                let mut w = tensor(sd, &format!("{blk}.{conv}.weight"), &[cout, ci, 3, 3])?;
                let mut b = tensor(sd, &format!("{blk}.{conv}.bias"), &[cout])?;
                let g = tensor(sd, &format!("{blk}.{bn}.weight"), &[cout])?;
                let beta = tensor(sd, &format!("{blk}.{bn}.bias"), &[cout])?;
                let mean = tensor(sd, &format!("{blk}.{bn}.running_mean"), &[cout])?;
                let var = tensor(sd, &format!("{blk}.{bn}.running_var"), &[cout])?;
                // y = (conv(x) − mean)·γ/√(var+ε) + β, folded into the convolution.
                for o in 0..cout {
                    let s = g[o] as f64 / (var[o] as f64 + 1e-5).sqrt();
                    for v in &mut w[o * ci * 9..(o + 1) * ci * 9] {
                        *v = (*v as f64 * s) as f32;
                    }
                    b[o] = ((b[o] as f64 - mean[o] as f64) * s + beta[o] as f64) as f32;
                }
                convs.push(Conv {
                    cin: ci,
                    cout,
                    w,
                    b,
                });
            }
        }
        let classes = sd
            .get("fc.weight")
            .ok_or_else(|| ClassifierError::Missing("fc.weight".into()))?
            .shape
            .first()
            .copied()
            .unwrap_or(0)
            .max(1);
        let fc_w = tensor(sd, "fc.weight", &[classes, FEAT_DIM])?;
        let fc_b = tensor(sd, "fc.bias", &[classes])?;
        Ok(Classifier {
            convs,
            fc_w,
            fc_b,
            classes,
        })
    }

    /// Number of classes (rows of `fc`).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Penultimate features (128) and logits of one 32×32 RGB8 image (interleaved rows), with
    /// `evaluate.py`'s preprocessing: `u8 / 255 · 2 − 1`, channels first.
    pub fn forward(&self, rgb: &[u8]) -> Result<(Vec<f32>, Vec<f32>), ClassifierError> {
        if rgb.len() != SIDE * SIDE * 3 {
            return Err(ClassifierError::ImageSize {
                expected: SIDE,
                found: rgb.len(),
            });
        }
        let mut x = vec![0f32; 3 * SIDE * SIDE];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                x[c * SIDE * SIDE + p] = px[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
        let mut side = SIDE;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv3x3_relu(conv, &x, side);
            // Max pool after the first two blocks (after convs 1 and 3).
            if i == 1 || i == 3 {
                x = max_pool2(&x, conv.cout, side);
                side /= 2;
            }
        }
        let n = side * side;
        let feats: Vec<f32> = x
            .chunks_exact(n)
            .map(|c| c.iter().sum::<f32>() / n as f32)
            .collect();
        let logits = self
            .fc_w
            .chunks_exact(FEAT_DIM)
            .zip(&self.fc_b)
            .map(|(w, b)| b + w.iter().zip(&feats).map(|(a, f)| a * f).sum::<f32>())
            .collect();
        Ok((feats, logits))
    }
}

/// `relu(conv3x3(x) + b)`, stride 1, zero padding 1, channels first.
fn conv3x3_relu(c: &Conv, x: &[f32], side: usize) -> Vec<f32> {
    let n = side * side;
    let mut y = vec![0f32; c.cout * n];
    for o in 0..c.cout {
        let out = &mut y[o * n..(o + 1) * n];
        out.fill(c.b[o]);
        for ci in 0..c.cin {
            let inp = &x[ci * n..(ci + 1) * n];
            let k = &c.w[(o * c.cin + ci) * 9..(o * c.cin + ci + 1) * 9];
            for ky in 0..3 {
                for kx in 0..3 {
                    let w = k[ky * 3 + kx];
                    // Output rows/columns whose input pixel (yy+ky−1, xx+kx−1) is inside.
                    let (y0, y1) = (usize::from(ky == 0), side - usize::from(ky == 2));
                    let (x0, x1) = (usize::from(kx == 0), side - usize::from(kx == 2));
                    for yy in y0..y1 {
                        let src = &inp[(yy + ky - 1) * side + x0 + kx - 1..][..x1 - x0];
                        let dst = &mut out[yy * side + x0..yy * side + x1];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += w * s;
                        }
                    }
                }
            }
        }
        for v in out.iter_mut() {
            *v = v.max(0.0);
        }
    }
    y
}

/// 2×2 max pool, stride 2.
fn max_pool2(x: &[f32], ch: usize, side: usize) -> Vec<f32> {
    let h = side / 2;
    let mut y = vec![0f32; ch * h * h];
    for c in 0..ch {
        for yy in 0..h {
            for xx in 0..h {
                let at = |dy: usize, dx: usize| x[(c * side + 2 * yy + dy) * side + 2 * xx + dx];
                y[(c * h + yy) * h + xx] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
            }
        }
    }
    y
}

/// Index of the largest logit (the first on ties, as `torch.argmax`).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Why a Fréchet distance could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FrechetError {
    /// A covariance needs at least two samples.
    #[error("Fréchet distance needs at least 2 feature vectors per set, got {0}")]
    TooFew(usize),
    /// The sets' vectors differ in length (or are ragged).
    #[error("Fréchet distance: feature vectors of length {0} and {1}")]
    Dim(usize, usize),
}

/// Mean and unbiased covariance (`np.cov(rowvar=False)`, divisor n−1) of `set`, in f64.
pub fn mean_cov(set: &[Vec<f32>]) -> Result<(Vec<f64>, Vec<f64>), FrechetError> {
    let n = set.len();
    if n < 2 {
        return Err(FrechetError::TooFew(n));
    }
    let d = set[0].len();
    if let Some(v) = set.iter().find(|v| v.len() != d) {
        return Err(FrechetError::Dim(d, v.len()));
    }
    let mut mu = vec![0f64; d];
    for v in set {
        for (m, x) in mu.iter_mut().zip(v) {
            *m += *x as f64;
        }
    }
    for m in &mut mu {
        *m /= n as f64;
    }
    let mut cov = vec![0f64; d * d];
    let mut c = vec![0f64; d];
    for v in set {
        for (ci, (x, m)) in c.iter_mut().zip(v.iter().zip(&mu)) {
            *ci = *x as f64 - m;
        }
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    Ok((mu, cov))
}

/// Eigenvalues of the symmetric `n × n` matrix `a` (row-major), with the eigenvectors as the
/// columns of the returned matrix: cyclic Jacobi rotations until the off-diagonal mass is
/// negligible against the diagonal's.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.5.1).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Fréchet distance between Gaussians fitted to two feature sets:
/// `|μ₁−μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½`, as `evaluate.py`'s `frechet`. The trace of the
/// square root is `Σ √λ` over the eigenvalues of the symmetric `Σ₁^½ Σ₂ Σ₁^½` (the same as those
/// of `Σ₁Σ₂`); eigenvalues within rounding of 0 count as 0.
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f64, FrechetError> {
    let (m1, s1) = mean_cov(a)?;
    let (m2, s2) = mean_cov(b)?;
    let d = m1.len();
    if m2.len() != d {
        return Err(FrechetError::Dim(d, m2.len()));
    }
    // Eigenvalues within rounding of 0 count as 0: with fewer samples than dimensions the
    // covariances are singular, and √ of rounding noise (√1e-16 = 1e-8, over ~100 null
    // directions) would otherwise show as a distance.
    let floor = |l: &[f64]| {
        let top = l.iter().fold(0f64, |m, x| m.max(x.abs()));
        let eps = d as f64 * f64::EPSILON * top;
        l.iter()
            .map(|x| if *x <= eps { 0.0 } else { *x })
            .collect::<Vec<f64>>()
    };
    // Σ₁^½ = V diag(√λ) Vᵀ.
    let (l1, v1) = sym_eigen(&s1, d);
    let l1 = floor(&l1);
    let mut r = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            r[i * d + j] = (0..d)
                .map(|k| v1[i * d + k] * l1[k].max(0.0).sqrt() * v1[j * d + k])
                .sum();
        }
    }
    let mul = |x: &[f64], y: &[f64]| {
        let mut z = vec![0f64; d * d];
        for i in 0..d {
            for k in 0..d {
                let xik = x[i * d + k];
                for j in 0..d {
                    z[i * d + j] += xik * y[k * d + j];
                }
            }
        }
        z
    };
    let mut m = mul(&mul(&r, &s2), &r);
    // Symmetrize away the products' rounding before the symmetric solver.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let (l, _) = sym_eigen(&m, d);
    let tr_sqrt: f64 = floor(&l).iter().map(|x| x.sqrt()).sum();
    let dmu: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    Ok(dmu + tr(&s1) + tr(&s2) - 2.0 * tr_sqrt)
}
