//! Numeric kernels: dot products, Linear, Conv2d, norms, activations, softmax.
//!
//! # Layout
//!
//! One kernel family per file, each with its scratch-size function next to it; the portable
//! scalar code in these files is the reference, and the SIMD variants live under `arch/`:
//!
//! | file | kernels |
//! |---|---|
//! | [`layers`] | the views the kernels read: [`Weight`], [`Linear`], [`Conv`], [`Norm`] |
//! | [`dot`](mod@dot) | [`dot`](dot()), [`dot_f16`], [`dot_i8`], the f32 4 × 2 register block |
//! | [`pack`] | the int8 weight panel layout: [`pack_official`], [`pack_panels`], [`panels_len`] |
//! | [`gemm`] | the int8 GEMM on panels every int8 Linear and conv runs on, [`act_row_len`], [`gemm_i8_sums`] |
//! | [`linear`](mod@linear) | [`linear`](linear()), [`linear_shared`], [`LinearScratch`], [`linear_scratch_len`] |
//! | [`conv`] | [`conv2d`], [`ConvInput`], [`Pad`], [`conv_out_side`]; f32/f16 weights |
//! | [`conv_i8`] | the int8 conv (implicit GEMM), [`ConvScratch`], [`conv_scratch_len`] |
//! | [`norm`] | [`layer_norm`], [`group_norm`] and its steps `gn_*` |
//! | [`activation`] | [`silu`], [`gelu_tanh`], [`gelu_row`], [`softmax`] |
//! | [`attention`] | [`attention::attend_row`]: one query row over its keys and values |
//! | [`quant`] | [`quantize_row`], the one activation quantizer (Linear and Conv) |
//! | [`dispatch`] | [`Isa`]: which instruction set runs, chosen in one place |
//! | [`peak`] | [`int8_peak_probe`]: an ISA's int8 inner step in a register-resident loop |
//! | `arch/x86.rs` | AVX f32 blocks, conv tiles, attention scores and weighted values |
//! | `arch/x86_gemm.rs` | the int8 GEMM on AVX2, AVX-VNNI, AVX-512BW, AVX-512 VNNI |
//! | `arch/x86_peak.rs` | the int8 peak probes of those four ISAs |
//! | `arch/arm_dsp.rs` | the int8 GEMM on the Cortex-M4/M7 DSP extension (`SMLAD`) |
//! | `arch/arm_mve.rs` | the int8 GEMM on Cortex-M55 Helium (MVE: word gathers + `VMLADAVA.S8`) |
//!
//! # Contract
//!
//! - **No allocation.** Every kernel writes into caller-provided buffers and states its scratch
//!   needs ([`linear_scratch_len`], [`conv_scratch_len`]).
//! - **Lane order.** Float sums never depend on the ISA, the executor or the compiler: Rust never
//!   contracts `a·b + c` into an FMA, and each kernel fixes its summation order:
//!   - [`dot`](dot()), [`dot_f16`] and every f32/f16 Linear output: eight lanes, lane `l` summing
//!     `a[i]·b[i]` for `i ≡ l (mod 8)` over the whole 8-wide chunks in index order (one multiply,
//!     one add), reduced as `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, plus the
//!     remainder summed in index order. The 4 × 2 blocks (scalar or AVX) compute exactly this
//!     for each pair.
//!   - f32/f16 conv: each output is the bias plus the products over `(ci, ky, kx)` in that order.
//!     The AVX tile vectorizes across output columns, never along the sum. At the image border it
//!     adds `w·0` for a padding tap the scalar loop skips, which can only turn an exactly-zero
//!     output that started from a `−0.0` bias into `+0.0`.
//!   - LayerNorm and GroupNorm statistics: f64 sums in index order (GroupNorm per channel, then
//!     channels in order); softmax: f32 sum in index order.
//!   - Attention: each score is a [`dot`](dot()) (the AVX kernel reduces four keys' lanes at once
//!     with the same tree); the output adds `p_j · v_j` key by key.
//!   - exp and tanh (SiLU, GELU, softmax): branch-free polynomials of plain f32 operations
//!     (`crate::math`), so the vectorized rows give the scalar bits on every target.
//! - **Bit identity across ISAs.** int8 × int8 → i32 paths are exact, so they are identical on
//!   every ISA by construction (activations in [−127, 127] keep `vpmaddubsw` from saturating;
//!   see `arch/x86_gemm.rs`; the Arm DSP kernel is checked on the Cortex-M4 under QEMU by
//!   `firmware/src/bin/kernels.rs`). f32 and f16 results of every ISA equal the scalar reference bit
//!   for bit (with the one zero-sign caveat above). The ISA tests (`isa_tests.rs`) check every
//!   kernel with a SIMD variant against the reference on random and adversarial inputs.
//! - **Executors.** Outputs are split into disjoint tasks over [`crate::parallel::Parallel`];
//!   each value is computed exactly as the sequential loop would.
//! - **Dispatch.** [`linear`](linear()) and [`conv2d`] run on [`Isa::active`];
//!   [`linear_with`] and [`conv2d_with`] take an explicit [`Isa`] and executor (the scalar
//!   reference is always compiled).

pub mod activation;
mod arch;
pub mod attention;
pub mod conv;
pub mod conv_i8;
pub mod dispatch;
pub mod dot;
pub mod gemm;
pub mod layers;
pub mod linear;
pub mod norm;
pub mod pack;
pub mod peak;
pub mod quant;

#[cfg(test)]
mod isa_tests;
#[cfg(test)]
mod tests;

pub use activation::{gelu_row, gelu_tanh, silu, softmax};
pub use conv::{
    conv2d, conv2d_with, conv_out_side, conv_scratch_len, conv_scratch_len_same, ConvInput,
    ConvScratch, Pad,
};
pub use dispatch::Isa;
pub use dot::{dot, dot_f16, dot_i8};
pub use gemm::{act_row_len, gemm_i8_sums};
pub use layers::{Conv, Linear, Norm, PanelsI8, Weight};
pub use linear::{linear, linear_scratch_len, linear_shared, linear_with, LinearScratch};
pub use norm::{
    gn_accumulate, gn_apply, gn_channel_affine, gn_group_stats, group_norm, layer_norm,
};
pub use pack::{pack_official, pack_panels, panel_value, panels_len};
pub use peak::int8_peak_probe;
pub use quant::{quantize_residual, quantize_row};
