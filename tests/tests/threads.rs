//! Threads change nothing: a full run (sampling and decoding) on 2 or 3 threads gives the same
//! bits as the sequential run, for both fixtures, both weight formats and both attentions, with
//! the per-token work of the transformer block (attention, LayerNorm, GELU, residuals) actually
//! split over the threads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{bits, run_recorded, RunOut, OFFICIAL, SIX};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::parallel::{Parallel, StdThreads, MIN_TASK_FLOATS};
use srdd_core::{Attention, Model, Schedule, WeightFormat};

/// Threads that count the tasks they are given, with a chosen least work per task.
struct Counting {
    threads: StdThreads,
    tasks: AtomicUsize,
    least: usize,
}

impl Parallel for Counting {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        self.tasks.fetch_add(n, Ordering::Relaxed);
        self.threads.run(n, f)
    }
    fn width(&self) -> usize {
        self.threads.width()
    }
    fn min_task_floats(&self) -> usize {
        self.least
    }
}

fn run(model: &Model<'_>, o: SampleOptions, sched: &Schedule, par: Option<&Counting>) -> RunOut {
    let plan = Plan::new(&model.config, &o, sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = match par {
        Some(p) => Generator::with_parallel(model, o, sched.clone(), arena.as_bytes_mut(), p),
        None => Generator::new(model, o, sched.clone(), arena.as_bytes_mut()),
    }
    .unwrap();
    run_recorded(&mut gen).unwrap()
}

fn assert_same_bits(got: &RunOut, want: &RunOut, what: &str) {
    assert_eq!(got.tokens, want.tokens, "{what}: tokens");
    for (k, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        assert_eq!(bits(g), bits(w), "{what}: logits of step {k}");
    }
    assert_eq!(bits(&got.f_hat), bits(&want.f_hat), "{what}: f_hat");
    assert_eq!(bits(&got.image), bits(&want.image), "{what}: image");
}

#[test]
fn threaded_runs_equal_the_sequential_run_bit_for_bit() {
    for fixture in [SIX, OFFICIAL] {
        for w in [WeightFormat::F32, WeightFormat::Int8] {
            common::with_model(fixture, w, |model| {
                let sched = Schedule::full(&model.config);
                for attention in [Attention::Markov, Attention::Causal] {
                    let o = SampleOptions {
                        top_k: 50,
                        seed: 7,
                        attention,
                        ..SampleOptions::new(1)
                    };
                    let want = run(model, o, &sched, None);
                    for threads in [2, 3] {
                        let mut tasks = [0usize; 2];
                        // The default grain (the tiny models' rows are mostly below it), then
                        // a grain of one row, so every row loop splits.
                        for (i, least) in [MIN_TASK_FLOATS, 1].into_iter().enumerate() {
                            let par = Counting {
                                threads: StdThreads(threads),
                                tasks: AtomicUsize::new(0),
                                least,
                            };
                            let got = run(model, o, &sched, Some(&par));
                            let what = format!(
                                "{fixture} {w:?} {attention:?} {threads} threads, \
                                 {least} floats per task"
                            );
                            assert_same_bits(&got, &want, &what);
                            tasks[i] = par.tasks.load(Ordering::Relaxed);
                        }
                        assert!(
                            tasks[1] > tasks[0],
                            "{fixture} {w:?} {attention:?}: the row loops never split ({tasks:?})"
                        );
                    }
                }
            });
        }
    }
}
