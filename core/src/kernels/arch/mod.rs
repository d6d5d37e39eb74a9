//! Per-architecture kernels. Each file holds the SIMD variants of kernels whose portable
//! reference lives in the family files (`dot.rs`, `conv.rs`, …); the reference is the fallback
//! on every other target. Which variant runs is decided in one place, [`super::Isa`].

#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
pub(crate) mod x86;
