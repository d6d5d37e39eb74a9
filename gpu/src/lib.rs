//! # srdd-gpu
//!
//! The CUDA backend: a second implementation of [`srdd_core::Forward`] (contract in
//! `core/src/forward/mod.rs`), driven by the unchanged [`srdd_core::Sampler`] through
//! `Sampler::with_forward`. Kernels live in `gpu/kernels/*.cu`, are compiled at run time by
//! NVRTC for the device's architecture ([`ptx`]), and are checked op by op against the CPU
//! engine (`gpu/tests/ops.rs`, `srdd-tools parity --backend cuda`), in the manner of ggml's
//! `test-backend-ops`.
//!
//! The driver and NVRTC are loaded dynamically (`cudarc`'s `dynamic-loading`), so this crate
//! builds and links on machines without CUDA; [`Gpu::open`] probes for the driver first and
//! returns [`GpuError::NoDriver`] there.
//!
//! ```no_run
//! # fn main() -> Result<(), srdd_gpu::GpuError> {
//! let gpu = srdd_gpu::Gpu::open(0)?;
//! println!("{} (sm_{}{})", gpu.name(), gpu.compute_capability().0, gpu.compute_capability().1);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod check;
mod decoder;
mod driver;
mod error;
mod forward;
mod model;
pub mod ops;
pub mod ptx;

pub use check::{
    backend_ops, forward_vs_cpu, nmse, psnr_db, ForwardCheck, OpCheck, A16_BOUND, F32_BOUND,
    IMAGE_PSNR_DB, INT8_BOUND,
};
pub use driver::{driver_present, DevBuf, Gpu};
pub use error::{GpuError, Result};
pub use forward::CudaForward;
pub use model::DeviceModel;

/// Whether this build has a CUDA backend (it always does; whether a device exists is a run-time
/// question: [`Gpu::open`]).
pub const AVAILABLE: bool = true;
