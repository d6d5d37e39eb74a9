//! # srdd-tools
//!
//! Converts official VAR / VQVAE checkpoints (`.pth`, `.safetensors`, nested training
//! checkpoints) to `.srdd` files, quantizes them, inspects them, and runs golden parity fixtures.

pub mod checkpoint;
pub mod convert;
pub mod inspect;
pub mod parity;
