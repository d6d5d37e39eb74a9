//! Kernel throughput: Linear and Conv2d in f32 and int8 at d16-like shapes.
//! Throughput is reported in elements = multiply-accumulates (criterion prints "elem/s" = MAC/s).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use srdd_core::kernels::{
    conv2d, conv_scratch_len, linear, linear_scratch_len, ConvScratch, LinearScratch, Pad,
};
use srdd_core::parallel::Sequential;
use srdd_core::weights::{Conv, Linear, Weight};

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Crude int8 codes of weights in [−1, 1) (scale 1/127): throughput does not depend on them.
fn int8_codes(w: &[f32]) -> Vec<i8> {
    w.iter().map(|v| (v * 127.0).round() as i8).collect()
}

/// The two storage types benchmarked, f32 and int8, of the same weights.
fn f32_and_int8<'a>(
    w: &'a [f32],
    q: &'a [i8],
    scales: &'a [f32],
) -> [(&'static str, Weight<'a>); 2] {
    [("f32", Weight::F32(w)), ("int8", Weight::I8 { q, scales })]
}

fn bench_linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    // (tokens, in, out): a 16x16-scale fc1 of d16, and a 4x4 scale (GEMV-like).
    for (n, din, dout) in [(256usize, 1024usize, 1024usize), (16, 1024, 4096)] {
        let x = data(n * din, 1);
        let w = data(dout * din, 2);
        let b = data(dout, 3);
        let q = int8_codes(&w);
        let scales = vec![1.0 / 127.0; dout];
        let mut y = vec![0f32; n * dout];
        let (lf, lq) = linear_scratch_len(n, din);
        let mut sf = vec![0f32; lf];
        let mut sq = vec![0i8; lq];
        g.throughput(Throughput::Elements((n * din * dout) as u64));
        for (name, wt) in f32_and_int8(&w, &q, &scales) {
            let l = Linear {
                w: wt,
                b: Some(&b),
                out_dim: dout,
                in_dim: din,
            };
            g.bench_with_input(
                BenchmarkId::new(name, format!("{n}x{din}x{dout}")),
                &l,
                |bch, l| {
                    bch.iter(|| {
                        linear(
                            &x,
                            n,
                            l,
                            &mut y,
                            &mut LinearScratch {
                                f: &mut sf,
                                q: &mut sq,
                            },
                            &Sequential,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

fn bench_conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv3x3");
    g.sample_size(10);
    for (ch, side) in [(160usize, 32usize), (64, 64)] {
        let x = data(ch * side * side, 4);
        let w = data(ch * ch * 9, 5);
        let b = data(ch, 6);
        let q = int8_codes(&w);
        let scales = vec![1.0 / 127.0; ch];
        let mut y = vec![0f32; ch * side * side];
        let (a, qr, r) = conv_scratch_len(ch, side, side, side, 3);
        let (mut sa, mut sq, mut sr) = (vec![0i8; a], vec![0i8; qr], vec![0f32; r]);
        g.throughput(Throughput::Elements((ch * ch * 9 * side * side) as u64));
        for (name, wt) in f32_and_int8(&w, &q, &scales) {
            let cv = Conv {
                w: wt,
                b: &b,
                cout: ch,
                cin: ch,
                k: 3,
            };
            g.bench_with_input(
                BenchmarkId::new(name, format!("{ch}ch_{side}px")),
                &cv,
                |bch, cv| {
                    bch.iter(|| {
                        let mut s = ConvScratch {
                            unfold: &mut sa,
                            qrow: &mut sq,
                            row_scale: &mut sr,
                        };
                        conv2d(
                            &x,
                            side,
                            side,
                            cv,
                            1,
                            Pad::same(1),
                            &mut y,
                            Some(&mut s),
                            &Sequential,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench_linear, bench_conv);
criterion_main!(benches);
