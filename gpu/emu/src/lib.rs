//! # srdd-gpu-emu
//!
//! Runs `srdd-gpu`'s CUDA kernels on the CPU: `gpu/kernels/*.cu` compile as C++ against a small
//! emulation of the CUDA execution model (`emu.h`: blocks one after another, a block's threads
//! as cooperative fibers that switch at barriers and warp collectives; `mma.sync`, `dp4a` and
//! the f16 conversion as the PTX ISA defines them). [`gpu`] gives a [`srdd_gpu::Gpu`] whose
//! launches go there and whose device memory is host memory, so the whole CUDA backend (the
//! launch code, every kernel, `CudaForward`, the device decoder) runs and is checked against the
//! CPU engine on machines without a GPU, CI included. It says nothing about speed, and it
//! cannot catch what only real hardware shows (races the fiber order hides, PTX the emulation
//! reads differently from the hardware); the same checks run on a GPU in `scripts/gpu-check`.
#![deny(missing_docs)]

use std::ffi::{c_char, c_void};

extern "C" {
    fn srdd_emu_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        block: u32,
        params: *mut *mut c_void,
    ) -> i32;
}

/// A [`srdd_gpu::Gpu`] whose kernels run on this CPU emulation, reporting compute capability
/// 9.0 (so the tensor-core int8 kernels are the ones chosen; `Gpu::use_dp4a` switches).
pub fn gpu() -> srdd_gpu::Gpu {
    srdd_gpu::Gpu::emulated(srdd_emu_launch, (9, 0))
}
