//! # srdd-tools
//!
//! Converts official VAR / VQVAE checkpoints (`.pth`, `.safetensors`, nested training
//! checkpoints) to `.srdd` files, quantizes them, inspects them, runs golden parity fixtures, and
//! compares the CPU engine with another forward backend op by op ([`backend_parity`]).

pub mod backend_parity;
pub mod boards;
pub mod checkpoint;
pub mod classifier;
pub mod convert;
pub mod inspect;
pub mod parity;
pub mod plan;
pub mod quant_report;
pub mod smooth;
