//! Sampling: a seeded RNG that gives the same stream on every target, and the official
//! top-k / top-p semantics (`docs/SPEC.md` §8) on float logits.

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
pub fn sample_token(
    logits: &mut [f32],
    top_k: u32,
    top_p: f32,
    temperature: f32,
    rng: &mut Rng,
    scratch: &mut [f32],
) -> u32 {
    let u = rng.next_f32();
    sample_token_at(logits, top_k, top_p, temperature, u, scratch)
}

/// [`sample_token`] with its uniform draw `u` already taken (so that tokens whose draws were
/// taken in order can be filtered and drawn concurrently).
pub fn sample_token_at(
    logits: &mut [f32],
    top_k: u32,
    top_p: f32,
    temperature: f32,
    u: f32,
    scratch: &mut [f32],
) -> u32 {
    let v = logits.len();
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
            total += crate::math::exp(*l - m);
        }
        let mut above = 0f32;
        let mut tau = m;
        for l in scratch.iter() {
            if above / total >= top_p {
                break;
            }
            tau = *l;
            above += crate::math::exp(*l - m);
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
        total += crate::math::exp(*l - m);
    }
    let target = u * total;
    let mut run = 0f32;
    let mut last_kept = 0u32;
    for (i, l) in logits.iter().enumerate() {
        let p = crate::math::exp(*l - m);
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

#[cfg(test)]
mod sampler_tests {
    use super::*;

    #[test]
    fn rng_matches_an_independent_xoshiro256starstar() {
        // Reference values from a separate Python implementation of SplitMix64 seeding and
        // xoshiro256**.
        let golden: [(u64, [u64; 3]); 3] = [
            (
                0,
                [0x99ec5f36cb75f2b4, 0xbf6e1f784956452a, 0x1a5f849d4933e6e0],
            ),
            (
                1,
                [0xb3f2af6d0fc710c5, 0x853b559647364cea, 0x92f89756082a4514],
            ),
            (
                0xdeadbeef,
                [0xc5555444a74d7e83, 0x65c30d37b4b16e38, 0x54f773200a4efa23],
            ),
        ];
        for (seed, want) in golden {
            let mut r = Rng::new(seed);
            for w in want {
                assert_eq!(r.next_u64(), w, "seed {seed:#x}");
            }
        }
        let mut r = Rng::new(9);
        let mut sum = 0f64;
        for _ in 0..20_000 {
            let f = r.next_f32();
            assert!((0.0..1.0).contains(&f));
            sum += f as f64;
        }
        assert!((sum / 20_000.0 - 0.5).abs() < 0.01);
    }

    #[test]
    fn sample_token_consumes_exactly_one_draw() {
        let mut s = [0f32; 6];
        for (k, p, t) in [
            (0u32, 0.0f32, 1.0f32),
            (1, 0.0, 1.0),
            (3, 0.9, 0.5),
            (0, 0.3, 2.0),
            (6, 1.0, 1.0),
        ] {
            let mut r = Rng::new(77);
            let mut twin = r.clone();
            let mut l = [0.5f32, -1.0, 2.0, 0.0, 1.5, -3.0];
            let tok = sample_token(&mut l, k, p, t, &mut r, &mut s);
            assert!(tok < 6);
            twin.next_u64();
            assert_eq!(r.next_u64(), twin.next_u64(), "k {k} p {p} t {t}");
        }
    }

    #[test]
    fn draw_is_the_inverse_cdf_in_vocabulary_order() {
        // Uniform logits over 4 tokens: the token is floor(4u) for the one draw u (exact in f32).
        let mut s = [0f32; 4];
        for seed in 0..200 {
            let u = Rng::new(seed).next_f32();
            let mut l = [0.25f32; 4];
            let tok = sample_token(&mut l, 0, 0.0, 1.0, &mut Rng::new(seed), &mut s);
            assert_eq!(tok, (4.0 * u) as u32, "seed {seed} u {u}");
        }
        // A single finite logit always wins.
        for seed in 0..50 {
            let mut l = [f32::NEG_INFINITY, f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY];
            assert_eq!(
                sample_token(&mut l, 0, 0.0, 1.0, &mut Rng::new(seed), &mut s),
                2
            );
        }
    }

    /// How often each token is drawn in 400 draws from `logits` with `top_k` and `temperature`.
    fn top_k_counts(
        logits: [f32; 5],
        top_k: u32,
        temperature: f32,
        rng: &mut Rng,
        s: &mut [f32; 5],
    ) -> [u32; 5] {
        let mut seen = [0u32; 5];
        for _ in 0..400 {
            let mut l = logits;
            seen[sample_token(&mut l, top_k, 0.0, temperature, rng, s) as usize] += 1;
        }
        seen
    }

    #[test]
    fn top_k_keeps_ties_and_nothing_below() {
        let mut rng = Rng::new(5);
        let mut s = [0f32; 5];
        let seen = top_k_counts([1.0, 3.0, 3.0, 0.0, 2.9], 1, 1.0, &mut rng, &mut s);
        assert_eq!((seen[0], seen[3], seen[4]), (0, 0, 0), "{seen:?}");
        assert!(
            seen[1] > 150 && seen[2] > 150,
            "ties at the k-th logit must both stay: {seen:?}"
        );
        // top-k 2 with temperature: only the two largest entries, [1] and [4].
        let seen = top_k_counts([1.0, 3.0, 2.0, 0.0, 2.5], 2, 0.25, &mut rng, &mut s);
        // At temperature 0.25 the 0.5 logit gap is a factor e²: p = [0.881, 0.119], i.e. 352 ± 6.5
        // draws of 400 (an ignored temperature would give 249).
        assert_eq!((seen[0], seen[2], seen[3]), (0, 0, 0), "{seen:?}");
        assert!(
            (325..380).contains(&seen[1]) && seen[4] == 400 - seen[1],
            "{seen:?}"
        );
    }

    #[test]
    fn top_p_boundary_follows_the_official_rule() {
        // p = [0.5, 0.3, 0.2]: a token stays iff the mass ranked above it is < top_p.
        let l = [libm::logf(0.5), libm::logf(0.3), libm::logf(0.2)];
        let mut s = [0f32; 3];
        for (top_p, support) in [
            (0.3f32, [true, false, false]),
            (0.6, [true, true, false]),
            (0.85, [true, true, true]),
        ] {
            let mut rng = Rng::new(11);
            let mut seen = [false; 3];
            for _ in 0..300 {
                let mut x = l;
                seen[sample_token(&mut x, 0, top_p, 1.0, &mut rng, &mut s) as usize] = true;
            }
            assert_eq!(seen, support, "top_p {top_p}");
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30]), 1);
    }
}
