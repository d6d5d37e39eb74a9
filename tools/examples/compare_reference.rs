#![allow(clippy::needless_range_loop)]
//! Greedy sample with an `.srdd` model and compare against a reference written by
//! `tools/scripts/official_reference.py sample` (keys `idx_{si}`, `fhat_{si}`, `image`).
//! Prints per-scale token agreement, f_hat and image error, and wall times.
//!
//! `cargo run --release -p srdd-tools --example compare_reference -- MODEL REF LABEL CFG markov|causal`

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Guidance, Plan, SampleOptions, StepHook};
use srdd_core::{Attention, Model, Schedule};
use std::time::Instant;

struct Cap {
    forced: Option<Vec<Vec<u32>>>,
    guided: Vec<Vec<f32>>,
    tokens: Vec<Vec<u32>>,
    fhat: Vec<Vec<f32>>,
    t: Instant,
    times: Vec<f64>,
}
impl Cap {
    /// A fresh capture, forcing `forced` tokens if given; the clock starts now.
    fn new(forced: Option<Vec<Vec<u32>>>) -> Self {
        Cap {
            forced,
            guided: vec![],
            tokens: vec![],
            fhat: vec![],
            t: Instant::now(),
            times: vec![],
        }
    }
}
impl StepHook for Cap {
    fn guided_logits(&mut self, k: usize, _t: usize, l: &[f32]) {
        if self.forced.is_some() {
            if self.guided.len() <= k {
                self.guided.push(Vec::new());
            }
            self.guided[k].extend_from_slice(l);
        }
    }
    fn force(&mut self, k: usize, _pn: usize, t: &mut [u32]) {
        if let Some(f) = &self.forced {
            t.copy_from_slice(&f[k]);
        }
    }
    fn scale_done(&mut self, _k: usize, t: &[u32], f: &[f32]) {
        self.tokens.push(t.to_vec());
        self.fhat.push(f.to_vec());
        self.times.push(self.t.elapsed().as_secs_f64());
    }
}

/// Reference tensor `k` read as little-endian `N`-byte values.
fn le_values<T, const N: usize>(
    st: &safetensors::SafeTensors<'_>,
    k: &str,
    from_le_bytes: fn([u8; N]) -> T,
) -> Vec<T> {
    st.tensor(k)
        .unwrap()
        .data()
        .chunks_exact(N)
        .map(|c| from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let t0 = Instant::now();
    let bytes = AlignedBytes::read(a[1].as_ref()).expect("model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("valid model");
    let load = t0.elapsed().as_secs_f64();
    let refb = std::fs::read(&a[2]).expect("reference");
    let st = safetensors::SafeTensors::deserialize(&refb).expect("safetensors");
    let opts = SampleOptions {
        label: a[3].parse().unwrap(),
        cfg: a[4].parse().unwrap(),
        guidance: Guidance::Linear,
        top_k: 1,
        top_p: 0.0,
        temperature: 1.0,
        seed: 0,
        attention: if a[5] == "causal" {
            Attention::Causal
        } else {
            Attention::Markov
        },
        ..SampleOptions::new(0)
    };
    let sched = Schedule::full(&model.config);
    let plan = Plan::new(&model.config, &opts, &sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let threads = std::env::var("SRDD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let par = srdd::pool::Pool::new(threads);
    let mut gen =
        Generator::with_parallel(&model, opts, sched.clone(), arena.as_bytes_mut(), &par).unwrap();
    let mut cap = Cap::new(None);
    gen.run(&mut cap).unwrap();
    let t_var = cap.t.elapsed().as_secs_f64();
    let side = model.config.image_side();
    let mut img = vec![0f32; 3 * side * side];
    let t1 = Instant::now();
    gen.decode(&mut |y, row| {
        for x in 0..side {
            for c in 0..3 {
                img[(c * side + y) * side + x] = (row[x * 3 + c] + 1.0) * 0.5;
            }
        }
    })
    .unwrap();
    let t_dec = t1.elapsed().as_secs_f64();
    let f32s = |k: &str| le_values(&st, k, f32::from_le_bytes);
    let i64s = |k: &str| le_values(&st, k, i64::from_le_bytes);
    println!(
        "arena {} bytes ({:.1} MiB), load+validate {:.2} s",
        plan.arena_bytes(),
        plan.arena_bytes() as f64 / 1048576.0,
        load
    );
    for k in 0..sched.len() {
        let want = i64s(&format!("idx_{k}"));
        let bad = cap.tokens[k]
            .iter()
            .zip(&want)
            .filter(|(a, b)| **a as i64 != **b)
            .count();
        let fw = f32s(&format!("fhat_{k}"));
        let md = cap.fhat[k]
            .iter()
            .zip(&fw)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "scale {k}: {bad}/{} tokens differ, f_hat max|d| {md:.2e}, t={:.2}s",
            want.len(),
            cap.times[k]
        );
    }
    let iw = f32s("image");
    let md = img
        .iter()
        .zip(&iw)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mse: f64 = img
        .iter()
        .zip(&iw)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / img.len() as f64;
    println!("image max|d| {md:.2e}, psnr {:.1} dB", -10.0 * mse.log10());
    println!(
        "transformer {t_var:.2} s, decoder {t_dec:.2} s, total {:.2} s",
        t_var + t_dec
    );
    if std::env::var_os("SRDD_FORCED").is_none() {
        return;
    }
    // Forced run: the reference's tokens are fed; compare guided logits and greedy choices.
    let want: Vec<Vec<u32>> = (0..sched.len())
        .map(|k| {
            i64s(&format!("idx_{k}"))
                .iter()
                .map(|&x| x as u32)
                .collect()
        })
        .collect();
    let mut gen =
        Generator::with_parallel(&model, opts, sched.clone(), arena.as_bytes_mut(), &par).unwrap();
    let mut cap = Cap::new(Some(want.clone()));
    gen.run(&mut cap).unwrap();
    let v = model.config.vae.vocab_size as usize;
    let (mut agree, mut total) = (0, 0);
    for k in 0..sched.len() {
        let lw = f32s(&format!("logits_{k}"));
        let lg = &cap.guided[k];
        let (mut md, mut sq) = (0f32, 0f64);
        let mut a = 0;
        for (t, w) in want[k].iter().enumerate() {
            let row = &lg[t * v..(t + 1) * v];
            if srdd_core::sample::argmax(row) == *w {
                a += 1;
            }
        }
        for (x, y) in lg.iter().zip(&lw) {
            md = md.max((x - y).abs());
            sq += ((x - y) as f64).powi(2);
        }
        agree += a;
        total += want[k].len();
        println!(
            "forced scale {k}: greedy agrees {a}/{}, logit err max {md:.3} rms {:.4}",
            want[k].len(),
            (sq / lg.len() as f64).sqrt()
        );
    }
    println!(
        "forced: greedy agrees {agree}/{total} ({:.1}%)",
        100.0 * agree as f64 / total as f64
    );
}
