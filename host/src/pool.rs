//! A persistent worker pool for the core's [`Parallel`] executor interface.
//!
//! [`srdd_core::parallel::StdThreads`] spawns OS threads on every kernel call; a sample makes
//! thousands of such calls, and on a loaded machine the spawns cost more than the kernels. A
//! [`Pool`] starts its workers once (for a whole command) and wakes them per call. Results do not
//! depend on the executor: every task computes exactly what the sequential loop computes.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use srdd_core::parallel::Parallel;

/// The tasks of the current call. The closure's lifetime is erased (see [`Pool::run`] for why
/// that is sound).
#[derive(Clone, Copy)]
struct Job {
    f: &'static (dyn Fn(usize) + Sync),
    n: usize,
}

/// What workers wait on, under [`Shared::state`].
struct State {
    /// Bumped once per call, so that a worker takes each job at most once.
    generation: u64,
    /// The job open for workers to join; `None` once the caller has closed it.
    job: Option<Job>,
    /// Set by `Drop`: workers exit.
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Workers sleep here between calls.
    work: Condvar,
    /// The caller sleeps here until the workers that joined its job have left it.
    done: Condvar,
    /// A copy of `State::generation` that workers spin on before sleeping.
    generation: AtomicU64,
    /// The next task index to claim.
    next: AtomicUsize,
    /// Workers that joined the current job and have not left it yet (incremented under `state`).
    joined: AtomicUsize,
    /// The first panic of the current call, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// How often a worker polls for the next call before it sleeps on the condvar: kernel calls come
/// in quick succession, and a futex wake costs tens of microseconds.
const SPIN: u32 = 2000;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Tasks never run under this lock, so it cannot be poisoned by them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs tasks of `job` until none are left; a panicking task is recorded and the
    /// others still run, so that the call always completes.
    fn work(&self, job: Job) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= job.n {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (job.f)(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
        }
    }

    fn worker(&self) {
        let mut seen = 0u64;
        loop {
            for _ in 0..SPIN {
                if self.generation.load(Ordering::Acquire) != seen {
                    break;
                }
                std::hint::spin_loop();
            }
            let job = {
                let mut st = self.lock();
                loop {
                    if st.shutdown {
                        return;
                    }
                    if st.generation != seen {
                        seen = st.generation;
                        if let Some(job) = st.job {
                            // Under the lock, so the caller sees us before it closes the job.
                            self.joined.fetch_add(1, Ordering::Relaxed);
                            break job;
                        }
                    }
                    st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.work(job);
            if self.joined.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Taking the lock orders this notify after the caller's check of `joined`.
                drop(self.lock());
                self.done.notify_one();
            }
        }
    }
}

/// `threads − 1` persistent worker threads that join the calling thread on each
/// [`Parallel::run`]; they exit when the pool is dropped.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One call at a time: a concurrent or nested call runs inline instead of waiting.
    call: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` threads in all (the caller and `threads − 1` workers; at least 1).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        let workers = (1..threads.max(1))
            .map(|k| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("srdd-pool-{k}"))
                    .spawn(move || s.worker())
                    .expect("spawning a pool worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            call: Mutex::new(()),
        }
    }
}

impl Parallel for Pool {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.workers.is_empty() {
            return (0..n).for_each(f);
        }
        // A task that calls back into the pool, or another thread using it meanwhile, runs its
        // tasks inline rather than waiting for (or deadlocking on) the call in progress.
        let Ok(_call) = self.call.try_lock() else {
            return (0..n).for_each(f);
        };
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased. Workers reach `f` only through `State::job`, which
        // this call closes (sets to `None`) before it waits until every worker that took the job
        // has left it (`joined == 0`); no task runs after that, so no worker touches `f` once
        // `run` returns, and `f` outlives every use. Panics in tasks are caught, so this thread
        // always reaches the wait.
        let f: &'static (dyn Fn(usize) + Sync) =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), _>(f) };
        let job = Job { f, n };
        sh.next.store(0, Ordering::Relaxed);
        {
            let mut st = sh.lock();
            st.job = Some(job);
            st.generation += 1;
            sh.generation.store(st.generation, Ordering::Release);
        }
        sh.work.notify_all();
        sh.work(job);
        {
            let mut st = sh.lock();
            st.job = None;
            // No worker can join any more; wait for those that did.
            while sh.joined.load(Ordering::Acquire) != 0 {
                st = sh.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        let panic = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = panic {
            drop(_call);
            resume_unwind(p);
        }
    }

    fn width(&self) -> usize {
        self.workers.len() + 1
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            // Workers catch task panics, so a join error cannot carry one; nothing to report.
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use srdd_core::parallel::Sequential;
    use std::sync::atomic::AtomicU32;

    fn counts(pool: &Pool, n: usize) -> Vec<u32> {
        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        pool.run(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        hits.into_iter().map(|h| h.into_inner()).collect()
    }

    #[test]
    fn every_index_runs_exactly_once() {
        for width in 1..=4 {
            let pool = Pool::new(width);
            assert_eq!(pool.width(), width);
            for n in [0usize, 1, 2, 3, 17, 1000] {
                for _ in 0..20 {
                    assert_eq!(counts(&pool, n), vec![1; n], "width {width} n {n}");
                }
            }
        }
        assert_eq!(Pool::new(0).width(), 1);
    }

    #[test]
    fn many_small_calls_finish() {
        for width in 2..=4 {
            let pool = Pool::new(width);
            let total = AtomicUsize::new(0);
            for call in 0..10_000 {
                let n = 2 + call % 5;
                pool.run(n, &|i| {
                    total.fetch_add(i + 1, Ordering::Relaxed);
                });
            }
            let want: usize = (0..10_000).map(|c| (2 + c % 5) * (3 + c % 5) / 2).sum();
            assert_eq!(total.into_inner(), want, "width {width}");
        }
    }

    #[test]
    fn nested_calls_run_inline() {
        let pool = Pool::new(3);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(5, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(total.into_inner(), 4 * 10);
    }

    #[test]
    fn a_panicking_task_is_reraised_and_the_pool_still_works() {
        for width in 1..=4 {
            let pool = Pool::new(width);
            for bad in [0usize, 5, 99] {
                let ran = AtomicUsize::new(0);
                let r = catch_unwind(AssertUnwindSafe(|| {
                    pool.run(100, &|i| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        if i == bad {
                            panic!("task {i} fails");
                        }
                    })
                }));
                let msg = r.expect_err("the panic reaches the caller");
                let msg = msg.downcast_ref::<String>().expect("a formatted message");
                assert_eq!(msg, &format!("task {bad} fails"));
                if width > 1 {
                    // Pool calls finish every task even when one fails.
                    assert_eq!(ran.into_inner(), 100);
                }
                assert_eq!(counts(&pool, 1000), vec![1; 1000], "width {width}");
            }
        }
    }

    #[test]
    fn sampling_on_the_pool_matches_sequential() {
        use srdd_core::generate::SampleOptions;
        let m = srdd_core::Model::from_bytes(&crate::DEFAULT_MODEL.0).unwrap();
        let sched = srdd_core::Schedule::full(&m.config);
        let mut opts = SampleOptions::for_model(&m, 1);
        opts.seed = 7;
        let policy = crate::ResampleChoice::parse("keep", &m).unwrap();
        let pool = Pool::new(2);
        let want = crate::sample_batch(&m, opts, &sched, 2, &policy, &Sequential, &|| ()).unwrap();
        let got = crate::sample_batch(&m, opts, &sched, 2, &policy, &pool, &|| ()).unwrap();
        assert_eq!(want.len(), got.len());
        for (w, g) in want.iter().zip(&got) {
            assert_eq!((w.width, w.height), (g.width, g.height));
            assert!(w.rgb == g.rgb, "pool image differs from sequential");
        }
    }
}
