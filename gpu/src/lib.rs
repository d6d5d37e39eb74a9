//! # srdd-gpu
//!
//! The CUDA backend (cudarc + NVRTC, kernels compiled at run time) arrives with its own issue.
//! Until then this crate only fixes the seam: a backend runs the same [`srdd_core::Model`] and
//! must agree with the CPU core within the NMSE bounds documented in `docs/QUANTIZATION.md`.

/// Whether this build has a CUDA backend (not yet).
pub const AVAILABLE: bool = false;
