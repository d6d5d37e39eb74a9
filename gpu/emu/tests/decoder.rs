//! The int8 decoder on the (emulated) CUDA backend gives the CPU engine's bits. This f_hat (a
//! causal greedy sample of the built-in model) is one where that matters: perturbing it by one
//! part in 10⁷ moves the CPU's own image to about 43 dB, because the int8 convs quantize every
//! row and ulp-level differences flip codes that the decoder then amplifies. A decoder that was
//! merely close (libm's expf in SiLU, fused multiply-adds) measured 43 dB here.

use srdd_core::aligned::AlignedBytes;
use srdd_core::arena::Arena;
use srdd_core::generate::Compute;
use srdd_core::parallel::StdThreads;
use srdd_core::resample::{KeepAll, ResamplePolicy};
use srdd_core::{Attention, Forward, Model, Plan, SampleOptions, Sampler, Schedule, StepHook};

struct LastFhat(Vec<f32>);

impl StepHook for LastFhat {
    fn scale_done(&mut self, _k: usize, _t: &[u32], f: &[f32]) {
        self.0 = f.to_vec();
    }
}

#[test]
fn emulated_int8_decoder_gives_the_cpu_bits() {
    let gpu = srdd_gpu_emu::gpu();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let bytes = AlignedBytes::read(std::path::Path::new(&format!(
        "{root}/models/default-int8.srdd"
    )))
    .expect("built-in model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("model");
    let cfg = &model.config;
    let par = StdThreads(2);
    let sched = Schedule::full(cfg);
    let mut opts = SampleOptions::for_model(&model, 2);
    opts.seed = 11;
    opts.attention = Attention::Causal;
    opts.top_k = 1;
    let plan = Plan::batch(cfg, &opts, &sched, 1, Compute::Cpu).expect("plan");
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut s =
        Sampler::cpu(&model, opts, sched.clone(), 1, arena.as_bytes_mut(), &par).expect("sampler");
    let mut last = LastFhat(vec![]);
    let mut keep = KeepAll;
    while !s.finished() {
        let mut h: Vec<&mut dyn StepHook> = vec![&mut last];
        let mut p: Vec<&mut dyn ResamplePolicy> = vec![&mut keep];
        s.step(&mut h, &mut p).expect("step");
    }
    let f_hat = last.0;
    let mut scratch = AlignedBytes::zeroed(srdd_core::vae::decoder_scratch_bytes(cfg, 0));
    let mut decode_cpu = |f: &[f32]| {
        let mut img = vec![];
        let mut ar = Arena::new(scratch.as_bytes_mut()).expect("arena");
        srdd_core::vae::decode(
            &model.weights.decoder,
            cfg,
            f,
            &mut ar,
            true,
            0,
            &par,
            &mut |_, r| img.extend_from_slice(r),
        )
        .expect("cpu decode");
        img
    };
    let want = decode_cpu(&f_hat);
    let nudged: Vec<f32> = f_hat
        .iter()
        .enumerate()
        .map(|(i, v)| v * if i % 2 == 0 { 1.0 + 1e-7 } else { 1.0 - 1e-7 })
        .collect();
    let nudged_db = srdd_gpu::psnr_db(&want, &decode_cpu(&nudged));
    println!("CPU image vs the CPU's image of f_hat·(1 ± 1e-7): {nudged_db:.1} dB");
    let dm = srdd_gpu::DeviceModel::upload(&gpu, &model).expect("upload");
    let mut fwd = srdd_gpu::CudaForward::new(&dm, &opts, &sched, 1).expect("forward");
    let mut got = vec![];
    fwd.decode(&f_hat, &mut [], &mut |_, r| got.extend_from_slice(r))
        .expect("decode");
    let differing = want
        .iter()
        .zip(&got)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(got.len(), want.len());
    assert_eq!(differing, 0, "{differing} values differ from the CPU's");
}
