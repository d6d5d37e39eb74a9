//! Batch sampling: B images run through the backend as one batch of 2·B rows must equal B
//! single-image runs with seeds seed + i, byte for byte, whatever the attention, guidance,
//! refinement policy or hook; and the backend seam's contract (rows, probes) holds.

mod common;

use srdd_core::aligned::AlignedBytes;
use srdd_core::edit::EditHook;
use srdd_core::forward::{Chunk, Io, Probe, Step, TensorId};
use srdd_core::generate::{Compute, Generator, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::parallel::{Sequential, StdThreads};
use srdd_core::resample::{ConfidenceThreshold, FixedFraction, ResamplePolicy};
use srdd_core::{Attention, Error, Model, Schedule, WeightFormat};

/// Every image's tokens of every step, its `f_hat` bits and its decoded rows.
#[derive(Debug, PartialEq)]
struct Image {
    tokens: Vec<Vec<u32>>,
    f_hat: Vec<u32>,
    rgb: Vec<u32>,
}

#[derive(Default)]
struct Record(Vec<Vec<u32>>);
impl StepHook for Record {
    fn scale_done(&mut self, _k: usize, tokens: &[u32], _f: &[f32]) {
        self.0.push(tokens.to_vec());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn policy(refine: bool) -> Box<dyn ResamplePolicy> {
    if refine {
        Box::new(FixedFraction { fraction: 0.3 })
    } else {
        Box::new(ConfidenceThreshold { threshold: 0.5 })
    }
}

fn single(model: &Model<'_>, o: SampleOptions, sched: &Schedule, refine: bool) -> Image {
    let plan = Plan::new(&model.config, &o, sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(model, o, sched.clone(), arena.as_bytes_mut()).unwrap();
    let mut rec = Record::default();
    gen.run_with(&mut rec, &mut *policy(refine)).unwrap();
    let f_hat = bits(gen.f_hat());
    let mut rgb = Vec::new();
    gen.decode(&mut |_, row| rgb.extend(bits(row))).unwrap();
    Image {
        tokens: rec.0,
        f_hat,
        rgb,
    }
}

/// Image `i` of a batch run alone: seed + i.
fn single_image(
    model: &Model<'_>,
    o: SampleOptions,
    sched: &Schedule,
    i: usize,
    refine: bool,
) -> Image {
    let seed = o.seed + i as u64;
    single(model, SampleOptions { seed, ..o }, sched, refine)
}

fn batch(
    model: &Model<'_>,
    o: SampleOptions,
    sched: &Schedule,
    images: usize,
    refine: bool,
) -> Vec<Image> {
    let plan = Plan::batch(&model.config, &o, sched, images, Compute::Cpu).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let par = StdThreads(2);
    let mut s = Sampler::cpu(model, o, sched.clone(), images, arena.as_bytes_mut(), &par).unwrap();
    let mut recs: Vec<Record> = (0..images).map(|_| Record::default()).collect();
    let mut pols: Vec<Box<dyn ResamplePolicy>> = (0..images).map(|_| policy(refine)).collect();
    while !s.finished() {
        let mut hooks: Vec<&mut dyn StepHook> =
            recs.iter_mut().map(|r| r as &mut dyn StepHook).collect();
        let mut ps: Vec<&mut dyn ResamplePolicy> =
            pols.iter_mut().map(|p| p.as_mut() as _).collect();
        s.step(&mut hooks, &mut ps).unwrap();
    }
    let mut out = Vec::new();
    for (i, rec) in recs.into_iter().enumerate() {
        let f_hat = bits(s.f_hat(i));
        let mut rgb = Vec::new();
        s.decode(i, &mut |_, row| rgb.extend(bits(row))).unwrap();
        out.push(Image {
            tokens: rec.0,
            f_hat,
            rgb,
        });
    }
    out
}

/// Two images on the CPU backend with sequential kernels.
fn two_images<'m, 'a>(
    model: &'m Model<'m>,
    o: SampleOptions,
    sched: &Schedule,
    arena: &'a mut [u8],
) -> Sampler<'m, 'a, srdd_core::CpuForward<'m, 'a>> {
    Sampler::cpu(model, o, sched.clone(), 2, arena, &Sequential).unwrap()
}

/// One refinement policy per image of a pair.
fn quarters() -> [FixedFraction; 2] {
    [
        FixedFraction { fraction: 0.25 },
        FixedFraction { fraction: 0.25 },
    ]
}

#[test]
fn a_batch_equals_single_runs_byte_for_byte() {
    for (fixture, w) in [
        ("tiny-official-schedule", WeightFormat::F32),
        ("tiny-six-scales", WeightFormat::Int8),
    ] {
        let bytes = common::packed(&common::fixture(fixture), w);
        let model = Model::from_bytes(bytes.as_bytes()).unwrap();
        let sched = Schedule::full(&model.config);
        for attention in [Attention::Markov, Attention::Causal] {
            for refine in [false, true] {
                let o = SampleOptions {
                    top_k: 50,
                    seed: 11,
                    attention,
                    refine: refine as u8,
                    ..SampleOptions::new(2)
                };
                let images = if attention == Attention::Causal { 3 } else { 8 };
                let got = batch(&model, o, &sched, images, refine);
                for (i, g) in got.iter().enumerate() {
                    let one = single_image(&model, o, &sched, i, refine);
                    let what = format!("{fixture} {w:?} {attention:?} refine {refine} image {i}");
                    assert_eq!(g.tokens, one.tokens, "{what}: tokens");
                    assert_eq!(g.f_hat, one.f_hat, "{what}: f_hat");
                    assert_eq!(g.rgb, one.rgb, "{what}: image");
                }
                // Different seeds give different images (the batch is not one image copied).
                assert_ne!(got[0].tokens, got[1].tokens, "{fixture} {attention:?}");
            }
        }
    }
}

#[test]
fn edit_hooks_apply_per_image_in_a_batch() {
    let bytes = common::packed(&common::fixture("tiny-six-scales"), WeightFormat::F32);
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let sched = Schedule::full(&model.config);
    let p = model.config.latent_side();
    let o = SampleOptions {
        top_k: 50,
        seed: 3,
        ..SampleOptions::new(1)
    };
    // Image 0 keeps the whole source, image 1 nothing: its tokens are freely drawn.
    let source: Vec<u32> = (0..sched.total_tokens() as u32).map(|t| t % 7).collect();
    let keep_all = vec![1f32; p * p];
    let keep_none = vec![0f32; p * p];
    let n = sched.max_tokens();
    let (mut r0, mut f0, mut r1, mut f1) =
        (vec![0f32; n], vec![false; n], vec![0f32; n], vec![false; n]);
    let mut h0 = EditHook::new(&keep_all, p, &source, &mut r0, &mut f0);
    let mut h1 = EditHook::new(&keep_none, p, &source, &mut r1, &mut f1);
    let plan = Plan::batch(&model.config, &o, &sched, 2, Compute::Cpu).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut s = two_images(&model, o, &sched, arena.as_bytes_mut());
    let [mut q0, mut q1] = quarters();
    let mut fhat_from_source = vec![0f32; model.config.vae.cvae as usize * p * p];
    while !s.finished() {
        s.step(&mut [&mut h0, &mut h1], &mut [&mut q0, &mut q1])
            .unwrap();
    }
    let mut scratch =
        AlignedBytes::zeroed(srdd_core::tokenize::fhat_from_tokens_bytes(&model, &sched));
    srdd_core::tokenize::fhat_from_tokens(
        &model,
        &sched,
        &source,
        scratch.as_bytes_mut(),
        &mut fhat_from_source,
        &Sequential,
    )
    .unwrap();
    assert_eq!(
        bits(s.f_hat(0)),
        bits(&fhat_from_source),
        "image 0 keeps the source"
    );
    assert_ne!(
        bits(s.f_hat(1)),
        bits(&fhat_from_source),
        "image 1 is drawn"
    );
}

/// Records every tensor the backend reports.
#[derive(Default)]
struct Tensors(Vec<(TensorId, usize)>);
impl Probe for Tensors {
    fn tensor(&mut self, id: TensorId, data: &[f32]) {
        assert!(data.iter().all(|v| v.is_finite()), "{id:?} is not finite");
        self.0.push((id, data.len()));
    }
}

#[test]
fn the_cpu_backend_reports_its_intermediates_and_checks_the_batch() {
    let bytes = common::packed(&common::fixture("tiny-six-scales"), WeightFormat::F32);
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let sched = Schedule::full(&model.config);
    let o = SampleOptions {
        top_k: 50,
        ..SampleOptions::new(0)
    };
    let plan = Plan::batch(&model.config, &o, &sched, 2, Compute::Cpu).unwrap();
    assert_eq!(plan.images, 2);
    let one = Plan::new(&model.config, &o, &sched).unwrap();
    assert!(plan.arena_bytes() > one.arena_bytes());
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    // One byte less is refused with the exact figure.
    assert_eq!(
        Sampler::cpu(
            &model,
            o,
            sched.clone(),
            2,
            &mut arena.as_bytes_mut()[..plan.arena_bytes() - 1],
            &Sequential
        )
        .err(),
        Some(Error::ArenaTooSmall {
            needed: plan.arena_bytes(),
            given: plan.arena_bytes() - 1
        })
    );
    assert!(Plan::batch(&model.config, &o, &sched, 0, Compute::Cpu).is_err());
    assert!(Plan::batch(&model.config, &o, &sched, 65, Compute::Cpu).is_err());
    let mut s = two_images(&model, o, &sched, arena.as_bytes_mut());
    let (mut a, mut b) = (Record::default(), Record::default());
    let [mut pa, mut pb] = quarters();
    // One hook per image.
    assert!(s.step(&mut [&mut a], &mut [&mut pa]).is_err());
    let mut probe = Tensors::default();
    s.step_probed(&mut [&mut a, &mut b], &mut [&mut pa, &mut pb], &mut probe)
        .unwrap();
    let depth = model.config.var.depth as usize;
    let c = model.config.var.embed_dim as usize;
    let v = model.config.vae.vocab_size as usize;
    // Step 0 has one token; with guidance at weight 0 on the first step only the cond rows run.
    let rows = 2;
    let count = |op: &str| probe.0.iter().filter(|(id, _)| id.op == op).count();
    assert_eq!(count("input"), rows);
    assert_eq!(count("block"), rows * depth);
    assert_eq!(count("logits"), rows);
    assert!(probe
        .0
        .iter()
        .all(|(id, len)| *len == if id.op == "logits" { v } else { c }));
}

/// A second backend, as a device backend is: it owns its memory (here a host buffer standing in
/// for device memory) and ignores the sampler's scratch. It runs the CPU kernels inside, so its
/// images must equal the CPU backend's; what it proves is that the sampler needs nothing else.
struct OwnMemory<'m, 'a> {
    inner: srdd_core::CpuForward<'m, 'a>,
    scratch: &'a mut [u8],
}

impl srdd_core::Forward for OwnMemory<'_, '_> {
    fn max_rows(&self) -> usize {
        self.inner.max_rows()
    }
    fn prepare(&mut self, step: &Step<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        assert!(io.scratch.is_empty(), "a device plan gives no host scratch");
        let scratch = &mut *self.scratch;
        self.inner.prepare(
            step,
            Io {
                scratch,
                probe: io.probe,
            },
        )
    }
    fn logits(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        let scratch = &mut *self.scratch;
        self.inner.logits(
            step,
            chunk,
            Io {
                scratch,
                probe: io.probe,
            },
        )
    }
    fn decode(
        &mut self,
        f_hat: &[f32],
        _scratch: &mut [u8],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> srdd_core::Result<()> {
        self.inner.decode(f_hat, self.scratch, sink)
    }
}

#[test]
fn a_backend_with_its_own_memory_plugs_into_the_unchanged_sampler() {
    let bytes = common::packed(
        &common::fixture("tiny-official-schedule"),
        WeightFormat::Int8,
    );
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let sched = Schedule::full(&model.config);
    let o = SampleOptions {
        top_k: 50,
        seed: 5,
        attention: Attention::Causal,
        ..SampleOptions::new(4)
    };
    let images = 2;
    // The backend's own memory: the CPU plan's bytes (more than it needs, simply).
    let cpu = Plan::batch(&model.config, &o, &sched, images, Compute::Cpu).unwrap();
    let mut own = AlignedBytes::zeroed(cpu.arena_bytes());
    let (run, scratch) = own.as_bytes_mut().split_at_mut(cpu.kv_cache_bytes);
    let mut ar = srdd_core::arena::Arena::new(run).unwrap();
    let inner =
        srdd_core::CpuForward::new(&model, &o, &sched, images, &mut ar, &Sequential).unwrap();
    let fwd = OwnMemory { inner, scratch };
    // The sampler's arena holds only its own buffers.
    let plan = Plan::batch(&model.config, &o, &sched, images, Compute::Device).unwrap();
    assert!(plan.arena_bytes() < cpu.arena_bytes());
    assert_eq!((plan.kv_cache_bytes, plan.decode_bytes), (0, 0));
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut s = Sampler::with_forward(
        &model,
        o,
        sched.clone(),
        images,
        arena.as_bytes_mut(),
        fwd,
        &Sequential,
    )
    .unwrap();
    let (mut a, mut b) = (Record::default(), Record::default());
    let [mut pa, mut pb] = quarters();
    while !s.finished() {
        s.step(&mut [&mut a, &mut b], &mut [&mut pa, &mut pb])
            .unwrap();
    }
    for (i, rec) in [a, b].into_iter().enumerate() {
        let mut rgb = Vec::new();
        s.decode(i, &mut |_, row| rgb.extend(bits(row))).unwrap();
        let got = Image {
            tokens: rec.0,
            f_hat: bits(s.f_hat(i)),
            rgb,
        };
        let one = single_image(&model, o, &sched, i, false);
        assert_eq!(got, one, "image {i}");
    }
}
