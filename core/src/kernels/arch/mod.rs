//! Per-architecture kernels. Each file holds the SIMD variants of kernels whose portable
//! reference lives in the family files (`dot.rs`, `conv.rs`, `gemm.rs`, …); the reference is
//! the fallback on every other target. The variants are compiled for their instruction sets with
//! `#[target_feature]` whatever the build's target CPU (x86-64 and AArch64), and which one runs
//! is decided at run time in one place, [`super::Isa`]. The Arm DSP and MVE kernels are the
//! exception: Arm target features are unstable, so each is compiled only for a core that has
//! the extension (see [`super::Isa::ArmDsp`], [`super::Isa::ArmMve`]).

#[cfg(all(target_arch = "arm", any(target_feature = "dsp", feature = "arm-dsp")))]
pub(crate) mod arm_dsp;
#[cfg(all(target_arch = "arm", feature = "arm-mve"))]
pub(crate) mod arm_mve;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64_gemm;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_peak;
