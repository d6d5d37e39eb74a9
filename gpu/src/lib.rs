//! # srdd-gpu
//!
//! The CUDA backend (cudarc + NVRTC, kernels compiled at run time) arrives with its own issue.
//! It will be a second implementation of [`srdd_core::Forward`] (contract in
//! `core/src/forward/mod.rs` and `docs/ARCHITECTURE.md`, "The forward seam"), driven by the
//! unchanged [`srdd_core::Sampler`] through `Sampler::with_forward` with an arena planned by
//! `Plan::batch(…, Compute::Device)`; it must agree with [`srdd_core::CpuForward`] op by op
//! (the backend's [`srdd_core::forward::Probe`] tensors) within the NMSE bounds of its issue.

/// Whether this build has a CUDA backend (not yet).
pub const AVAILABLE: bool = false;
