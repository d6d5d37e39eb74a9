//! Refinement passes and token resampling (SRDD: the Markovian reading lets a scale be re-run
//! statelessly, like a diffusion step).
//!
//! After a scale's first draw, a refinement pass re-runs the same scale with its input taken from
//! the draft `f_hat` (the accumulated latent *including* the draft tokens), and a
//! [`ResamplePolicy`] decides from per-token features which tokens are drawn again from the new
//! logits; the others are kept. How SRDD chooses tokens is not published (`docs/SPEC.md` §11.3);
//! the policies here are ours: a confidence threshold, a fixed fraction of the least confident
//! tokens, and a tiny learned logistic scorer (trained by `tools/train/train_policy.py`).

/// Features of one drawn token, from the distribution it was drawn from (after guidance,
/// temperature, top-k and top-p).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct TokenStats {
    /// Probability of the drawn token.
    pub confidence: f32,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
}

// SAFETY: two f32 fields, `repr(C)`, no padding; every bit pattern is valid.
unsafe impl bytemuck::Zeroable for TokenStats {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for TokenStats {}

/// Computes [`TokenStats`] of `token` under `softmax(logits)` (`-inf` entries are excluded).
pub fn token_stats(logits: &[f32], token: u32) -> TokenStats {
    let m = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    let mut z = 0f32;
    for l in logits {
        z += crate::math::exp(*l - m);
    }
    let mut h = 0f32;
    for l in logits {
        if *l > f32::NEG_INFINITY {
            let p = crate::math::exp(*l - m) / z;
            if p > 0.0 {
                h -= p * libm::logf(p);
            }
        }
    }
    let conf = logits
        .get(token as usize)
        .map_or(0.0, |l| crate::math::exp(*l - m) / z);
    TokenStats {
        confidence: conf,
        entropy: h,
    }
}

/// Chooses the tokens a refinement pass draws again.
pub trait ResamplePolicy {
    /// For step `k` of `steps`, refinement pass `pass` (1-based): sets `resample[i]` for every
    /// token `i` to draw again, given the current tokens' features `stats` (same length).
    fn select(
        &mut self,
        k: usize,
        steps: usize,
        pass: usize,
        stats: &[TokenStats],
        resample: &mut [bool],
    );
}

/// Implements [`ResamplePolicy`] for a policy that decides each token alone:
/// `|policy, k, steps, stats|` gives whether the token with features `stats` is drawn again at
/// step `k` of `steps`.
macro_rules! per_token_policy {
    ($policy:ty, |$p:ident, $k:pat, $steps:pat, $s:ident| $redraw:expr) => {
        impl ResamplePolicy for $policy {
            fn select(
                &mut self,
                $k: usize,
                $steps: usize,
                _: usize,
                stats: &[TokenStats],
                resample: &mut [bool],
            ) {
                let $p = &*self;
                for (r, $s) in resample.iter_mut().zip(stats) {
                    *r = $redraw;
                }
            }
        }
    };
}

/// Keeps every token: a refinement pass with this policy changes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepAll;

impl ResamplePolicy for KeepAll {
    fn select(&mut self, _: usize, _: usize, _: usize, _: &[TokenStats], resample: &mut [bool]) {
        resample.iter_mut().for_each(|r| *r = false);
    }
}

/// Draws again every token whose confidence is below `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConfidenceThreshold {
    /// Probability below which a token is drawn again.
    pub threshold: f32,
}

per_token_policy!(ConfidenceThreshold, |p, _, _, s| s.confidence < p.threshold);

/// Draws again the `ceil(fraction · n)` least confident tokens (ties: lower index first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedFraction {
    /// Fraction of the scale's tokens drawn again, in [0, 1].
    pub fraction: f32,
}

impl ResamplePolicy for FixedFraction {
    fn select(
        &mut self,
        _: usize,
        _: usize,
        _: usize,
        stats: &[TokenStats],
        resample: &mut [bool],
    ) {
        let n = stats.len();
        let m = libm::ceilf(self.fraction.clamp(0.0, 1.0) * n as f32) as usize;
        // Rank by counting (no allocation; n is at most a few thousand).
        for i in 0..n {
            let ci = stats[i].confidence;
            let rank = stats
                .iter()
                .enumerate()
                .filter(|(j, s)| s.confidence < ci || (s.confidence == ci && *j < i))
                .count();
            resample[i] = rank < m;
        }
    }
}

/// A logistic scorer over `[confidence, entropy, k / (steps − 1)]`: a token is drawn again when
/// `w · features + bias > 0` (probability of "this token is wrong" above one half).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learned {
    /// Feature weights.
    pub w: [f32; 3],
    /// Bias.
    pub bias: f32,
}

impl Learned {
    /// The score (logit) of one token.
    pub fn score(&self, k: usize, steps: usize, s: &TokenStats) -> f32 {
        let frac = if steps > 1 {
            k as f32 / (steps - 1) as f32
        } else {
            0.0
        };
        self.w[0] * s.confidence + self.w[1] * s.entropy + self.w[2] * frac + self.bias
    }
}

per_token_policy!(Learned, |p, k, steps, s| p.score(k, steps, s) > 0.0);

#[cfg(test)]
mod tests {
    use super::*;

    fn st(c: f32) -> TokenStats {
        TokenStats {
            confidence: c,
            entropy: 0.0,
        }
    }

    #[test]
    fn fixed_fraction_takes_the_least_confident() {
        let s = [st(0.9), st(0.1), st(0.5), st(0.1), st(0.7)];
        let mut r = [false; 5];
        FixedFraction { fraction: 0.4 }.select(1, 3, 1, &s, &mut r);
        assert_eq!(r, [false, true, false, true, false]);
        FixedFraction { fraction: 0.5 }.select(1, 3, 1, &s, &mut r);
        assert_eq!(r, [false, true, true, true, false]);
        FixedFraction { fraction: 0.0 }.select(1, 3, 1, &s, &mut r);
        assert_eq!(r, [false; 5]);
    }

    #[test]
    fn threshold_and_stats() {
        let s = [st(0.2), st(0.8)];
        let mut r = [true; 2];
        ConfidenceThreshold { threshold: 0.5 }.select(0, 2, 1, &s, &mut r);
        assert_eq!(r, [true, false]);
        KeepAll.select(0, 2, 1, &s, &mut r);
        assert_eq!(r, [false, false]);
        let t = token_stats(&[0.0, 0.0, f32::NEG_INFINITY, 0.0], 1);
        assert!((t.confidence - 1.0 / 3.0).abs() < 1e-6);
        assert!((t.entropy - libm::logf(3.0)).abs() < 1e-5);
    }
}
