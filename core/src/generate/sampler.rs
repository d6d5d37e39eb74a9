//! The sampler: everything of a sampling run that is not the forward compute, once, for any
//! [`Forward`] backend and a batch of images.
//!
//! ```text
//! Sampler::new      f_hat = 0 for every image; image i draws with Rng(seed + i)
//! step() × steps    rows = each image's cond (and null) branch
//!                   forward.prepare(step) → forward.logits(chunk) → (1+t)·cond − t·uncond
//!                   → draw (top-k, top-p, temperature) → hook.force
//!                   refinement: policy picks tokens → draft input → prepare → draw again
//!                   f_hat += Phi(bicubic(codebook[idx], P)); next input = area(f_hat, pn')
//! decode(i, sink)   forward.decode(f_hat of image i)
//! ```

use super::hook::StepHook;
use super::plan::{Compute, Plan, SamplerRun, SamplerStep, Shape};
use super::SampleOptions;
use crate::arena::Arena;
use crate::config::Attention;
use crate::error::{Error, Result};
use crate::forward::{
    Chunk, CpuForward, Forward, Io, NoProbe, Probe, Row, Step, MAX_BATCH, MAX_ROWS,
};
use crate::layout::zeroed_flags;
use crate::parallel::{Parallel, SharedMut};
use crate::resample::{token_stats, ResamplePolicy, TokenStats};
use crate::sample::{sample_token, sample_token_at, Rng};
use crate::schedule::Schedule;
use crate::vq::{area_resize, VqScratch};
use crate::Model;

/// A batch of images sampled together over a forward backend `F`.
pub struct Sampler<'m, 'a, F: Forward> {
    model: &'m Model<'m>,
    par: &'m dyn Parallel,
    forward: F,
    opts: SampleOptions,
    sched: Schedule,
    shape: Shape,
    k: usize,
    rngs: heapless::Vec<Rng, MAX_BATCH>,
    run: SamplerRun<'a>,
    /// Step scratch (sampler buffers, then the backend's), overlaid by the decoder's scratch.
    phase: &'a mut [u8],
    sampler_step_bytes: usize,
}

impl<'m, 'a> Sampler<'m, 'a, CpuForward<'m, 'a>> {
    /// `images` images on the CPU backend, in an arena of at least
    /// [`Plan::batch`]`(…, Compute::Cpu).arena_bytes()` bytes; image `i` uses seed `opts.seed + i`.
    pub fn cpu(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        images: usize,
        arena: &'a mut [u8],
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        let plan = Plan::batch(&model.config, &opts, &sched, images, Compute::Cpu)?;
        check_arena(&plan, arena.len())?;
        let mut ar = Arena::new(arena)?;
        let shape = Shape::new(&model.config, &opts, &sched, images);
        let run = SamplerRun::take(&shape, &mut ar)?;
        let forward = CpuForward::new(model, &opts, &sched, images, &mut ar, par)?;
        Sampler::assemble(model, opts, sched, shape, run, ar, forward, par)
    }
}

impl<'m, 'a, F: Forward> Sampler<'m, 'a, F> {
    /// `images` images on a backend that computes off the host (its host scratch is none): the
    /// arena needs [`Plan::batch`]`(…, Compute::Device).arena_bytes()` bytes.
    pub fn with_forward(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        images: usize,
        arena: &'a mut [u8],
        forward: F,
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        let plan = Plan::batch(&model.config, &opts, &sched, images, Compute::Device)?;
        check_arena(&plan, arena.len())?;
        if forward.max_rows() < plan.rows * images {
            return Err(Error::BadOption(
                "the backend takes fewer rows than the batch",
            ));
        }
        let mut ar = Arena::new(arena)?;
        let shape = Shape::new(&model.config, &opts, &sched, images);
        let run = SamplerRun::take(&shape, &mut ar)?;
        Sampler::assemble(model, opts, sched, shape, run, ar, forward, par)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        shape: Shape,
        run: SamplerRun<'a>,
        mut ar: Arena<'a>,
        forward: F,
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        run.f_hat.iter_mut().for_each(|v| *v = 0.0);
        let rngs = (0..shape.images)
            .map(|i| Rng::new(opts.seed.wrapping_add(i as u64)))
            .collect();
        let remaining = ar.remaining();
        Ok(Sampler {
            model,
            par,
            forward,
            opts,
            sched,
            shape,
            k: 0,
            rngs,
            run,
            phase: ar.take::<u8>(remaining)?,
            sampler_step_bytes: SamplerStep::bytes(&shape) + VqScratch::bytes(&shape.vq()),
        })
    }

    /// Images of the batch.
    pub fn images(&self) -> usize {
        self.shape.images
    }

    /// The schedule being run.
    pub fn schedule(&self) -> &Schedule {
        &self.sched
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.k
    }

    /// True when every step has run.
    pub fn finished(&self) -> bool {
        self.k == self.sched.len()
    }

    /// The accumulated latent of image `i` (`Cvae × P × P`).
    pub fn f_hat(&self, i: usize) -> &[f32] {
        let len = self.shape.cv * self.shape.p * self.shape.p;
        &self.run.f_hat[i * len..(i + 1) * len]
    }

    /// The backend.
    pub fn forward(&mut self) -> &mut F {
        &mut self.forward
    }

    /// Runs the next scale for every image; `hooks[i]` and `policies[i]` belong to image `i`.
    pub fn step(
        &mut self,
        hooks: &mut [&mut dyn StepHook],
        policies: &mut [&mut dyn ResamplePolicy],
    ) -> Result<()> {
        self.step_probed(hooks, policies, &mut NoProbe)
    }

    /// [`Sampler::step`], reporting the backend's intermediate tensors to `probe`.
    pub fn step_probed(
        &mut self,
        hooks: &mut [&mut dyn StepHook],
        policies: &mut [&mut dyn ResamplePolicy],
        probe: &mut dyn Probe,
    ) -> Result<()> {
        if self.finished() {
            return Err(Error::WrongState("all scales already sampled"));
        }
        let images = self.shape.images;
        if hooks.len() != images || policies.len() != images {
            return Err(Error::BadOption("one hook and one policy per image"));
        }
        let Shape { cv, p, n: nmax, .. } = self.shape;
        let k = self.k;
        let steps = self.sched.len();
        let pn = self.sched.pn[k] as usize;
        let n = pn * pn;
        let settings = self.opts.settings(k, steps);
        let tg = settings.guidance as f64;
        let causal = self.opts.attention == Attention::Causal;
        // The null branch runs when it guides, and always for causal (its cache must be filled).
        let branches = if self.shape.branches == 2 && (causal || tg != 0.0) {
            2
        } else {
            1
        };
        let (own, backend) = self.phase.split_at_mut(self.sampler_step_bytes);
        let mut ar = Arena::new(own)?;
        let sb = SamplerStep::take(&self.shape, &mut ar)?;
        let mut vq = VqScratch::take(&self.shape.vq(), &mut ar)?;
        let flags = zeroed_flags(sb.flags);
        let ctx = StepCtx {
            k,
            pn,
            level: self.sched.level[k] as usize,
            cache_begin: (0..k).map(|j| self.sched.tokens(j)).sum(),
            branches,
            null: self.model.config.var.num_classes,
            label: self.opts.label,
            settings,
        };
        let mut active: heapless::Vec<usize, MAX_BATCH> = (0..images).collect();

        // First draw of every token of every image.
        let mut pass = Pass {
            forward: &mut self.forward,
            scratch: backend,
            logits: sb.logits,
            samp: sb.samp,
            stats: sb.stats,
            flags,
            rngs: &mut self.rngs,
            run: &mut self.run,
            shape: &self.shape,
            par: self.par,
        };
        pass.draw(&ctx, &active, false, hooks, probe)?;

        // Refinement: re-run this scale from the draft f_hat (f_hat plus the drafted tokens) for
        // the images whose policy picks tokens, and draw those again; the rest are kept.
        for r in 1..=settings.refine as usize {
            active.clear();
            for i in 0..images {
                let f = &mut pass.flags[i * nmax..i * nmax + n];
                policies[i].select(k, steps, r, &pass.stats[i * nmax..i * nmax + n], f);
                if !f.iter().any(|x| *x) {
                    continue;
                }
                let _ = active.push(i);
                let map = cv * p * p;
                vq.contribution(
                    self.model,
                    &self.sched,
                    k,
                    &pass.run.tokens[i * nmax..i * nmax + n],
                    self.par,
                );
                for ((d, f), c) in sb
                    .draft
                    .iter_mut()
                    .zip(&pass.run.f_hat[i * map..(i + 1) * map])
                    .zip(vq.contrib.iter())
                {
                    *d = *f + *c;
                }
                area_resize(sb.draft, cv, p, pn, &mut pass.run.next_in[i * cv * nmax..]);
            }
            if !active.is_empty() {
                pass.draw(&ctx, &active, true, hooks, probe)?;
            }
        }

        // f_hat += Phi(bicubic(codebook[idx], P)); next input = area(f_hat, pn_next).
        for i in 0..images {
            let map = cv * p * p;
            let tokens = &self.run.tokens[i * nmax..i * nmax + n];
            let f_hat = &mut self.run.f_hat[i * map..(i + 1) * map];
            vq.accumulate(self.model, &self.sched, k, tokens, f_hat, self.par);
            hooks[i].scale_done(k, tokens, f_hat);
            if k + 1 < steps {
                let pn2 = self.sched.pn[k + 1] as usize;
                area_resize(f_hat, cv, p, pn2, &mut self.run.next_in[i * cv * nmax..]);
            }
        }
        #[cfg(feature = "defmt")]
        defmt::info!(
            "srdd: scale {}/{} done ({}x{} tokens)",
            k + 1,
            steps,
            pn,
            pn
        );
        self.k += 1;
        Ok(())
    }

    /// Decodes image `i`'s finished `f_hat`, handing each image row (interleaved RGB in [−1, 1])
    /// to `sink`.
    pub fn decode(&mut self, i: usize, sink: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        if !self.finished() {
            return Err(Error::WrongState("decode before the last scale"));
        }
        if i >= self.shape.images {
            return Err(Error::BadOption("no such image in the batch"));
        }
        let map = self.shape.cv * self.shape.p * self.shape.p;
        self.forward
            .decode(&self.run.f_hat[i * map..(i + 1) * map], self.phase, sink)
    }
}

fn check_arena(plan: &Plan, given: usize) -> Result<()> {
    if given < plan.arena_bytes() {
        return Err(Error::ArenaTooSmall {
            needed: plan.arena_bytes(),
            given,
        });
    }
    Ok(())
}

/// What every pass of one step shares.
struct StepCtx {
    k: usize,
    pn: usize,
    level: usize,
    cache_begin: usize,
    branches: usize,
    null: u32,
    label: u32,
    settings: super::StepSettings,
}

/// The buffers one forward-and-draw pass works on.
struct Pass<'p, 's, F: Forward> {
    forward: &'p mut F,
    scratch: &'p mut [u8],
    logits: &'p mut [f32],
    samp: &'p mut [f32],
    stats: &'p mut [TokenStats],
    flags: &'p mut [bool],
    rngs: &'p mut [Rng],
    run: &'p mut SamplerRun<'s>,
    shape: &'p Shape,
    par: &'p dyn Parallel,
}

impl<F: Forward> Pass<'_, '_, F> {
    /// Runs the backend over the `active` images and draws their tokens: every token, or with
    /// `only_flagged` those whose flag is set; then lets each image's hook force tokens.
    fn draw(
        &mut self,
        ctx: &StepCtx,
        active: &[usize],
        only_flagged: bool,
        hooks: &mut [&mut dyn StepHook],
        probe: &mut dyn Probe,
    ) -> Result<()> {
        let Shape {
            n: nmax,
            cv,
            v,
            chunk,
            ..
        } = *self.shape;
        let n = ctx.pn * ctx.pn;
        let mut rows: heapless::Vec<Row, MAX_ROWS> = heapless::Vec::new();
        for &i in active {
            for b in 0..ctx.branches {
                let label = if b == 0 { ctx.label } else { ctx.null };
                let slot = (i * self.shape.branches + b) as u16;
                let _ = rows.push(Row {
                    label,
                    image: i as u16,
                    slot,
                });
            }
        }
        let step = Step {
            k: ctx.k,
            pn: ctx.pn,
            level: ctx.level,
            cache_begin: ctx.cache_begin,
            rows: &rows,
            input: if ctx.k == 0 { &[] } else { &*self.run.next_in },
            input_stride: cv * nmax,
        };
        self.forward.prepare(
            &step,
            Io {
                scratch: &mut *self.scratch,
                probe: &mut *probe,
            },
        )?;

        let s = &ctx.settings;
        let stats = s.refine > 0 || only_flagged;
        let mut t0 = 0;
        while t0 < n {
            let m = chunk.min(n - t0);
            let logits = &mut self.logits[..rows.len() * m * v];
            let chunk = Chunk { t0, m, out: logits };
            let io = Io {
                scratch: &mut *self.scratch,
                probe: &mut *probe,
            };
            self.forward.logits(&step, chunk, io)?;
            if ctx.branches == 2 {
                let bufs = GuidedBufs {
                    logits: &mut self.logits[..],
                    rngs: &mut self.rngs[..],
                    flags: &self.flags[..],
                    tokens: &mut self.run.tokens[..],
                    stats: &mut self.stats[..],
                };
                draw_guided(
                    bufs,
                    self.shape,
                    self.par,
                    ctx,
                    active,
                    only_flagged,
                    hooks,
                    (t0, m),
                );
                t0 += m;
                continue;
            }
            for (a, &i) in active.iter().enumerate() {
                let cond = &mut logits[a * m * v..(a + 1) * m * v];
                for j in 0..m {
                    let tok = t0 + j;
                    let lc = &mut cond[j * v..(j + 1) * v];
                    hooks[i].logits(ctx.k, tok, lc);
                    hooks[i].guided_logits(ctx.k, tok, lc);
                    if only_flagged && !self.flags[i * nmax + tok] {
                        continue;
                    }
                    let token = sample_token(
                        lc,
                        s.top_k,
                        s.top_p,
                        s.temperature,
                        &mut self.rngs[i],
                        self.samp,
                    );
                    self.run.tokens[i * nmax + tok] = token;
                    if stats {
                        self.stats[i * nmax + tok] = token_stats(lc, token);
                    }
                }
            }
            t0 += m;
        }
        for &i in active {
            let tokens = &mut self.run.tokens[i * nmax..i * nmax + n];
            hooks[i].force(ctx.k, ctx.pn, tokens);
            if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= v) {
                return Err(Error::TokenOutOfRange {
                    token: bad,
                    vocab: v as u32,
                });
            }
        }
        Ok(())
    }
}

/// The buffers [`draw_guided`] works on (fields of the [`Pass`] borrowed apart from the step's
/// input).
struct GuidedBufs<'b> {
    logits: &'b mut [f32],
    rngs: &'b mut [Rng],
    flags: &'b [bool],
    tokens: &'b mut [u32],
    stats: &'b mut [TokenStats],
}

/// The draw of a chunk of a guided step: per image and token, in order, the hooks, the CFG
/// mix (`(1 + g)·cond − g·uncond`) and the token's uniform draw from the image's stream
/// (kept in the spent unconditional row); then every token's filtering and inverse-CDF draw,
/// concurrently on `par`, each with its unconditional row as scratch. The same tokens as
/// drawing one by one.
#[allow(clippy::too_many_arguments)]
fn draw_guided(
    b: GuidedBufs<'_>,
    shape: &Shape,
    par: &dyn Parallel,
    ctx: &StepCtx,
    active: &[usize],
    only_flagged: bool,
    hooks: &mut [&mut dyn StepHook],
    (t0, m): (usize, usize),
) {
    let (nmax, v) = (shape.n, shape.v);
    let logits = &mut b.logits[..active.len() * 2 * m * v];
    let s = &ctx.settings;
    let tg = s.guidance as f64;
    let c1 = (1.0 + tg) as f32;
    let t32 = tg as f32;
    let stats = s.refine > 0 || only_flagged;
    // Per image, 2·m rows of v: the m conditional rows, then the m unconditional ones.
    for (a, &i) in active.iter().enumerate() {
        let (cond, rest) = logits[a * 2 * m * v..(a + 1) * 2 * m * v].split_at_mut(m * v);
        for j in 0..m {
            let tok = t0 + j;
            let lc = &mut cond[j * v..(j + 1) * v];
            hooks[i].logits(ctx.k, tok, lc);
            for (c, u) in lc.iter_mut().zip(&rest[j * v..(j + 1) * v]) {
                *c = c1 * *c - t32 * *u;
            }
            hooks[i].guided_logits(ctx.k, tok, lc);
            if only_flagged && !b.flags[i * nmax + tok] {
                continue;
            }
            rest[j * v] = b.rngs[i].next_f32();
        }
    }
    let flags = b.flags;
    let tokens = SharedMut::new(b.tokens);
    let token_stats_out = SharedMut::new(b.stats);
    let all = SharedMut::new(logits);
    let count = active.len() * m;
    let per_task = count.div_ceil(par.width().max(1) * 4).max(1);
    par.run(count.div_ceil(per_task), &|task| {
        for at in task * per_task..((task + 1) * per_task).min(count) {
            let (a, j) = (at / m, at % m);
            let (i, tok) = (active[a], t0 + j);
            if only_flagged && !flags[i * nmax + tok] {
                continue;
            }
            let base = a * 2 * m * v;
            // SAFETY: token (a, j) alone owns its conditional row, its unconditional row
            // (its draw, then its scratch) and its slots of the tokens and stats.
            let (lc, scratch) =
                unsafe { (all.slice(base + j * v, v), all.slice(base + (m + j) * v, v)) };
            let u = scratch[0];
            let token = sample_token_at(lc, s.top_k, s.top_p, s.temperature, u, scratch);
            unsafe { tokens.set(i * nmax + tok, token) };
            if stats {
                unsafe { token_stats_out.set(i * nmax + tok, token_stats(lc, token)) };
            }
        }
    });
}
