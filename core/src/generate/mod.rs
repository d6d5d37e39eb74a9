//! Sampling: options ([`SampleOptions`], the per-step [`StepTable`]), the arena [`Plan`], the
//! backend-agnostic [`Sampler`] over a [`Forward`](crate::forward::Forward) backend, hooks, and
//! [`Generator`], one image on the CPU backend.
//!
//! ```text
//! SampleOptions ─ Plan (layout tables) ─ arena
//!                         │
//! Sampler: steps, guidance, draws, hooks, refinement, f_hat bookkeeping
//!                         │  Step { rows, input }           ▲ logits by chunk
//!                         ▼                                 │
//! Forward backend (CpuForward, CUDA): AdaLN, blocks, head, decoder → kernels
//! ```

mod hook;
mod options;
pub(crate) mod plan;
mod sampler;

pub use crate::layout::Lifetime;
pub use hook::{Both, NoHook, StepHook};
pub use options::{Guidance, SampleOptions, StepSettings, StepTable, MAX_REFINE};
pub use plan::{Compute, Plan};
pub use sampler::Sampler;

use crate::error::Result;
use crate::forward::CpuForward;
use crate::parallel::{Parallel, Sequential};
use crate::resample::{FixedFraction, ResamplePolicy};
use crate::schedule::Schedule;
use crate::Model;

/// One image's sampling run on the CPU backend over a caller-provided arena (a [`Sampler`] with
/// a batch of one).
pub struct Generator<'m, 'a> {
    inner: Sampler<'m, 'a, CpuForward<'m, 'a>>,
}

impl<'m, 'a> Generator<'m, 'a> {
    /// Checks options, schedule and arena size ([`Plan::new`]).
    pub fn new(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        arena: &'a mut [u8],
    ) -> Result<Self> {
        Self::with_parallel(model, opts, sched, arena, &Sequential)
    }

    /// As [`Generator::new`], running kernels on `par` (results are identical).
    pub fn with_parallel(
        model: &'m Model<'m>,
        opts: SampleOptions,
        sched: Schedule,
        arena: &'a mut [u8],
        par: &'m dyn Parallel,
    ) -> Result<Self> {
        Ok(Generator {
            inner: Sampler::cpu(model, opts, sched, 1, arena, par)?,
        })
    }

    /// The schedule being run.
    pub fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.inner.steps_done()
    }

    /// True when every step has run.
    pub fn finished(&self) -> bool {
        self.inner.finished()
    }

    /// The accumulated latent (`Cvae × P × P`).
    pub fn f_hat(&self) -> &[f32] {
        self.inner.f_hat(0)
    }

    /// Runs the next scale; refinement passes (if any) draw again the least confident quarter of
    /// the tokens ([`FixedFraction`] 0.25).
    pub fn step(&mut self, hook: &mut dyn StepHook) -> Result<()> {
        self.step_with(hook, &mut FixedFraction { fraction: 0.25 })
    }

    /// Runs the next scale, choosing the tokens each refinement pass draws again with `policy`.
    pub fn step_with(
        &mut self,
        hook: &mut dyn StepHook,
        policy: &mut dyn ResamplePolicy,
    ) -> Result<()> {
        self.inner.step(&mut [hook], &mut [policy])
    }

    /// Runs every remaining scale.
    pub fn run(&mut self, hook: &mut dyn StepHook) -> Result<()> {
        self.run_with(hook, &mut FixedFraction { fraction: 0.25 })
    }

    /// Runs every remaining scale with `policy` choosing what refinement passes draw again.
    pub fn run_with(
        &mut self,
        hook: &mut dyn StepHook,
        policy: &mut dyn ResamplePolicy,
    ) -> Result<()> {
        while !self.finished() {
            self.step_with(hook, policy)?;
        }
        Ok(())
    }

    /// Decodes the finished `f_hat`, handing each image row (interleaved RGB in [−1, 1]) to `sink`.
    pub fn decode(&mut self, sink: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.inner.decode(0, sink)
    }
}
