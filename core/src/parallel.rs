//! Optional data parallelism without `std` in the core: kernels split their work into tasks that
//! write disjoint parts of the output, and a [`Parallel`] runs them. The core ships
//! [`Sequential`]; hosts plug in threads ([`StdThreads`] with the `std` feature). Results do not
//! depend on the executor: every task computes exactly what the sequential loop computes.

use core::marker::PhantomData;

/// Runs `n` independent tasks.
pub trait Parallel: Sync {
    /// Least work, in floats touched, worth a task of [`for_rows`]; smaller loops run as one
    /// call. Results never depend on it (tests lower it so that tiny models split too).
    fn min_task_floats(&self) -> usize {
        MIN_TASK_FLOATS
    }
    /// Calls `f(i)` once for every `i` in `0..n`, in any order, possibly concurrently.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
    /// How many tasks can run at once (used to size the split).
    fn width(&self) -> usize;
}

/// Runs tasks one after another on the calling thread.
pub struct Sequential;

impl Parallel for Sequential {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        for i in 0..n {
            f(i);
        }
    }
    fn width(&self) -> usize {
        1
    }
}

/// Scoped OS threads (std only): `threads − 1` helpers join the caller for each call.
#[cfg(feature = "std")]
pub struct StdThreads(pub usize);

#[cfg(feature = "std")]
impl Parallel for StdThreads {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        use core::sync::atomic::{AtomicUsize, Ordering};
        let workers = self.0.min(n);
        if workers <= 1 {
            return Sequential.run(n, f);
        }
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        };
        std::thread::scope(|s| {
            for _ in 1..workers {
                s.spawn(work);
            }
            work();
        });
    }
    fn width(&self) -> usize {
        self.0.max(1)
    }
}

/// Splits `len` items into at most `tasks` contiguous ranges of nearly equal size, each a
/// multiple of `grain` except the last. Returns the range of task `i`.
pub fn split(len: usize, tasks: usize, grain: usize, i: usize) -> (usize, usize) {
    let chunks = len.div_ceil(grain.max(1));
    let tasks = tasks.clamp(1, chunks.max(1));
    let per = chunks.div_ceil(tasks);
    let lo = (i * per * grain).min(len);
    let hi = ((i + 1) * per * grain).min(len);
    (lo, hi)
}

/// Number of tasks [`split`] actually produces.
pub fn split_count(len: usize, tasks: usize, grain: usize) -> usize {
    let chunks = len.div_ceil(grain.max(1));
    let tasks = tasks.clamp(1, chunks.max(1));
    chunks.div_ceil(chunks.div_ceil(tasks).max(1))
}

/// Least work, in floats touched, that is worth a task of [`for_rows`] (about 64 KiB): below it
/// waking a helper costs more than the work it takes over.
pub const MIN_TASK_FLOATS: usize = 16 * 1024;

/// Calls `f(lo, hi)` on contiguous ranges that cover rows `0..rows` once, as tasks on `par` when
/// every task gets at least [`Parallel::min_task_floats`] (`row_floats` per row), else once with the
/// whole range. Each row is computed by exactly one call, so per-row results do not depend on
/// the split.
pub fn for_rows(
    par: &dyn Parallel,
    rows: usize,
    row_floats: usize,
    f: &(dyn Fn(usize, usize) + Sync),
) {
    let grain = par
        .min_task_floats()
        .max(1)
        .div_ceil(row_floats.max(1))
        .max(1);
    let width = par.width();
    let tasks = split_count(rows, width, grain);
    if tasks <= 1 {
        if rows > 0 {
            f(0, rows);
        }
        return;
    }
    par.run(tasks, &|i| {
        let (lo, hi) = split(rows, width, grain, i);
        f(lo, hi)
    });
}

/// A mutable slice shared by tasks that write disjoint elements.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _p: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only write disjoint indices (the contract of `set`/`slice`), and T is Send.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}
unsafe impl<T: Send> Send for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Shares `s` for the duration of its borrow.
    pub fn new(s: &'a mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _p: PhantomData,
        }
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// No other task may access element `i` concurrently.
    #[inline]
    pub unsafe fn set(&self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: in bounds (checked), exclusive by the caller's contract.
        unsafe { *self.ptr.add(i) = v }
    }

    /// Element `i`, mutably.
    ///
    /// # Safety
    /// No other task may access element `i` concurrently.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self, i: usize) -> &mut T {
        assert!(i < self.len);
        // SAFETY: in bounds (checked), exclusive by the caller's contract.
        unsafe { &mut *self.ptr.add(i) }
    }

    /// A mutable view of `start..start + len`.
    ///
    /// # Safety
    /// No other task may access that range concurrently.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start);
        // SAFETY: in bounds (checked), exclusive by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs tasks in order, claiming `width` lanes.
    struct Wide(usize);
    impl Parallel for Wide {
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            Sequential.run(n, f)
        }
        fn width(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn for_rows_covers_every_row_once_and_splits_only_big_work() {
        use core::sync::atomic::{AtomicUsize, Ordering};
        for rows in [0usize, 1, 5, 64, 1000] {
            for width in 1..5 {
                for row_floats in [1usize, 64, 4096, MIN_TASK_FLOATS] {
                    let seen: [AtomicUsize; 1000] = core::array::from_fn(|_| AtomicUsize::new(0));
                    let calls = AtomicUsize::new(0);
                    for_rows(&Wide(width), rows, row_floats, &|lo, hi| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        for r in &seen[lo..hi] {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    assert!(seen[..rows].iter().all(|r| r.load(Ordering::Relaxed) == 1));
                    let calls = calls.load(Ordering::Relaxed);
                    let most = (rows * row_floats)
                        .div_ceil(MIN_TASK_FLOATS)
                        .clamp(1, width);
                    assert!(
                        calls <= most,
                        "rows {rows} width {width} floats {row_floats}"
                    );
                    if width > 1 && rows * row_floats >= 2 * MIN_TASK_FLOATS && rows > 1 {
                        assert!(calls > 1, "rows {rows} width {width} floats {row_floats}");
                    }
                }
            }
        }
    }

    #[test]
    fn split_covers_everything_once() {
        for len in [0usize, 1, 7, 64, 1000, 4096] {
            for tasks in 1..9 {
                for grain in [1usize, 4, 16] {
                    let n = split_count(len, tasks, grain);
                    let mut seen = 0;
                    let mut prev = 0;
                    for i in 0..n {
                        let (lo, hi) = split(len, tasks, grain, i);
                        assert_eq!(lo, prev);
                        prev = hi;
                        seen += hi - lo;
                    }
                    assert_eq!(seen, len, "len {len} tasks {tasks} grain {grain}");
                    assert!(n <= tasks.max(1));
                }
            }
        }
    }
}
