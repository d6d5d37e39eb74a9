//! A bump allocator over the caller's byte arena.
//!
//! Every allocation is rounded up to [`ARENA_ALIGN`] bytes, so the bytes a sequence of
//! allocations needs do not depend on where the arena starts; [`bytes_of`] is the same rounding,
//! used by the plan to compute exact sizes before any work starts.

use crate::error::{Error, Result};
use bytemuck::Pod;

/// Alignment of the arena base and of every allocation in it.
pub const ARENA_ALIGN: usize = 16;

/// Bytes that `n` values of `T` occupy in the arena.
pub const fn bytes_of<T>(n: usize) -> usize {
    (n * core::mem::size_of::<T>() + ARENA_ALIGN - 1) & !(ARENA_ALIGN - 1)
}

/// The unallocated rest of a caller-provided byte buffer.
pub struct Arena<'a> {
    buf: &'a mut [u8],
    needed: usize,
}

impl<'a> Arena<'a> {
    /// Wraps `buf`; fails if it is not [`ARENA_ALIGN`]-aligned.
    pub fn new(buf: &'a mut [u8]) -> Result<Self> {
        if !(buf.as_ptr() as usize).is_multiple_of(ARENA_ALIGN) {
            return Err(Error::Misaligned {
                needed: ARENA_ALIGN,
            });
        }
        Ok(Arena { buf, needed: 0 })
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` values of `T` (contents unspecified: every kernel writes before it reads).
    pub fn take<T: Pod>(&mut self, n: usize) -> Result<&'a mut [T]> {
        let bytes = bytes_of::<T>(n);
        self.needed += bytes;
        if bytes > self.buf.len() {
            return Err(Error::ArenaTooSmall {
                needed: self.needed,
                given: self.needed - bytes + self.buf.len(),
            });
        }
        let buf = core::mem::take(&mut self.buf);
        let (head, tail) = buf.split_at_mut(bytes);
        self.buf = tail;
        let head = &mut head[..n * core::mem::size_of::<T>()];
        bytemuck::try_cast_slice_mut(head).map_err(|_| Error::Misaligned {
            needed: ARENA_ALIGN,
        })
    }

    /// Takes the remaining bytes as a new arena (for phases that reuse scratch memory).
    pub fn rest(&mut self) -> Arena<'a> {
        Arena {
            buf: core::mem::take(&mut self.buf),
            needed: self.needed,
        }
    }

    /// A sub-arena over the remaining bytes for one phase: what it takes is given back when it
    /// is dropped, so a later phase reuses the same bytes. Its byte count continues this arena's,
    /// so an `ArenaTooSmall` inside it reports the total needed up to that point.
    pub fn scoped(&mut self) -> Arena<'_> {
        Arena {
            buf: &mut *self.buf,
            needed: self.needed,
        }
    }
}
