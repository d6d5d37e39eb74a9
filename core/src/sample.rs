//! Sampling: a seeded RNG that gives the same stream on every target, and the official
//! top-k / top-p semantics (`VAR_SPEC.md` §8) on float logits.

/// xoshiro256** seeded through SplitMix64: small, fast, and bit-identical everywhere.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }
}

/// Filters `logits` in place (temperature, then top-k, then top-p, official semantics) and draws
/// one token by inverse CDF in vocabulary order. `scratch` needs `logits.len()` floats.
/// `top_k == 0` and `top_p <= 0` disable the filters. Always consumes exactly one RNG draw.
pub fn sample_token(logits: &mut [f32], top_k: u32, top_p: f32, temperature: f32, rng: &mut Rng, scratch: &mut [f32]) -> u32 {
    let v = logits.len();
    let u = rng.next_f32();
    if temperature != 1.0 && temperature > 0.0 {
        let inv = 1.0 / temperature;
        logits.iter_mut().for_each(|l| *l *= inv);
    }
    let scratch = &mut scratch[..v];
    // top-k: keep logits >= the k-th largest (ties kept).
    let k = top_k as usize;
    if k > 0 && k < v {
        scratch.copy_from_slice(logits);
        let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let tau = *kth;
        logits.iter_mut().for_each(|l| {
            if *l < tau {
                *l = f32::NEG_INFINITY
            }
        });
    }
    // top-p: keep a token iff the probability mass ranked strictly above it is below top_p.
    if top_p > 0.0 && top_p < 1.0 {
        scratch.copy_from_slice(logits);
        scratch.sort_unstable_by(|a, b| b.total_cmp(a));
        let m = scratch[0];
        let mut total = 0f32;
        for l in scratch.iter() {
            total += libm::expf(*l - m);
        }
        let mut above = 0f32;
        let mut tau = m;
        for l in scratch.iter() {
            if above / total >= top_p {
                break;
            }
            tau = *l;
            above += libm::expf(*l - m);
        }
        logits.iter_mut().for_each(|l| {
            if *l < tau {
                *l = f32::NEG_INFINITY
            }
        });
    }
    // Draw.
    let m = logits.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    let mut total = 0f32;
    for l in logits.iter() {
        total += libm::expf(*l - m);
    }
    let target = u * total;
    let mut run = 0f32;
    let mut last_kept = 0u32;
    for (i, l) in logits.iter().enumerate() {
        let p = libm::expf(*l - m);
        if p > 0.0 {
            last_kept = i as u32;
            run += p;
            if run > target {
                return i as u32;
            }
        }
    }
    last_kept
}

/// Index of the largest logit, first on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stream_is_fixed() {
        let mut r = Rng::new(0);
        let a = r.next_u64();
        let mut r2 = Rng::new(0);
        assert_eq!(a, r2.next_u64());
        let f = Rng::new(7).next_f32();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = Rng::new(3);
        let mut s = [0f32; 5];
        for _ in 0..20 {
            let mut l = [0.1, 2.0, -1.0, 1.999, 0.5];
            assert_eq!(sample_token(&mut l, 1, 0.0, 1.0, &mut rng, &mut s), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_head() {
        let mut rng = Rng::new(4);
        let mut s = [0f32; 4];
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        for _ in 0..50 {
            let mut l = [3.0f32, 2.0, 1.0, 0.0];
            assert_eq!(sample_token(&mut l, 0, 0.5, 1.0, &mut rng, &mut s), 0);
        }
        // top_p 0.7 keeps two.
        let mut seen = [false; 4];
        for _ in 0..200 {
            let mut l = [3.0f32, 2.0, 1.0, 0.0];
            seen[sample_token(&mut l, 0, 0.7, 1.0, &mut rng, &mut s) as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
    }
}
