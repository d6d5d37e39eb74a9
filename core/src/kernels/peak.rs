//! The int8 micro-kernel peak of an ISA: its GEMM inner step in a register-resident loop, so a
//! caller with a clock can measure the most MAC/s that kernel's arithmetic reaches on one core
//! here, and report real layers as a fraction of it (`srdd bench`, the kernel benches).
//!
//! The core has no clock: [`int8_peak_probe`] runs the loop and says how many MACs it did, the
//! caller times it. What each ISA runs (the SIMD loops are in `arch/x86_peak.rs`):
//!
//! | ISA | step | accumulators |
//! |---|---|---|
//! | [`Isa::Scalar`], [`Isa::Avx`] | the scalar reference GEMM (`gemm.rs`) on one L1-resident panel | 16 per row |
//! | [`Isa::Avx2`] | `vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vpaddd` (ymm) | 4 rows × 2 |
//! | [`Isa::AvxVnni`] | ymm `vpdpbusd` | 5 rows × 2 |
//! | [`Isa::Avx512Bw`] | masked negation, zmm `vpmaddubsw`, `vpmaddwd`, `vpaddd` | 8 rows |
//! | [`Isa::Avx512Vnni`] | zmm `vpdpbusd` | 10 rows |
//!
//! [`Isa::Avx`] has no int8 kernel of its own (its int8 GEMM is the reference), so its peak is
//! the reference's; [`Isa::ArmDsp`] and [`Isa::ArmMve`] have no probe (the Cortex-M firmware
//! counts instructions instead: `docs/EMBEDDED.md`) and report the reference's too, as do the
//! AArch64 ISAs ([`Isa::Neon`], [`Isa::NeonDot`], [`Isa::NeonI8mm`]: no probe yet, so their
//! layers can exceed that figure). The SIMD loops load no panels and write no outputs: real layers stay below
//! their figure by what loads, broadcasts and epilogues cost. The scalar figure is the reference
//! kernel itself on cached data, so layers come close to it.

#[cfg(target_arch = "x86_64")]
use super::arch::x86_peak as x86;
use super::gemm::gemm_i8_with;
use super::layers::PanelsI8;
use super::pack::PANEL_NR;
use super::Isa;
use core::hint::black_box;

/// Rows of the scalar probe's GEMM.
const SCALAR_ROWS: usize = 4;
/// Inputs of the scalar probe's GEMM: long rows, as in the layers (the per-call work of the
/// reference is then negligible), and one 8 KiB panel, L1-resident.
const SCALAR_K: usize = 512;

/// Runs `isa`'s int8 inner step `iters` times on this thread and returns the multiply-accumulates
/// performed (the count depends on the ISA: time the call and divide). `None` when `isa` is not
/// [supported](Isa::supported) here (nothing runs).
pub fn int8_peak_probe(isa: Isa, iters: usize) -> Option<u64> {
    if !isa.supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` is supported, so the CPU has the features each probe enables.
        match isa {
            Isa::Avx2 => return Some(unsafe { x86::int8_peak_avx2(iters) }),
            Isa::AvxVnni => return Some(unsafe { x86::int8_peak_avxvnni(iters) }),
            Isa::Avx512Bw => return Some(unsafe { x86::int8_peak_avx512bw(iters) }),
            Isa::Avx512Vnni => return Some(unsafe { x86::int8_peak_avx512vnni(iters) }),
            Isa::Scalar
            | Isa::ArmDsp
            | Isa::ArmMve
            | Isa::Neon
            | Isa::NeonDot
            | Isa::NeonI8mm
            | Isa::Avx => {}
        }
    }
    Some(int8_peak_scalar(iters))
}

/// The reference GEMM of `SCALAR_ROWS` rows against one panel of `SCALAR_K` inputs, `iters`
/// times. The operands go through [`black_box`] on every call so the compiler cannot hoist the
/// (inlined) GEMM out of the loop.
fn int8_peak_scalar(iters: usize) -> u64 {
    let mut q = [0i8; PANEL_NR * SCALAR_K];
    for (i, v) in q.iter_mut().enumerate() {
        *v = (i as u8).wrapping_mul(37) as i8;
    }
    let mut a = [0i8; SCALAR_ROWS * SCALAR_K];
    for (i, v) in a.iter_mut().enumerate() {
        // In [−127, 127], as the quantizer gives.
        *v = (((i * 29) % 255) as i32 - 127) as i8;
    }
    let scales = [1.0f32; PANEL_NR];
    for _ in 0..black_box(iters) {
        let w = PanelsI8 {
            q: black_box(&q[..]),
            scales: &scales,
            rows: PANEL_NR,
            k: SCALAR_K,
            o0: 0,
            act16: false,
        };
        let rows = black_box(&a[..]);
        gemm_i8_with(
            Isa::Scalar,
            rows,
            SCALAR_K,
            SCALAR_ROWS,
            &w,
            (0, PANEL_NR),
            |_, _, sums| {
                black_box(sums);
            },
        );
    }
    (iters as u64).saturating_mul((SCALAR_ROWS * SCALAR_K * PANEL_NR) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MACs of one iteration of each probe: the table of the module doc, in bytes × lanes.
    fn macs_per_iter(isa: Isa) -> u64 {
        match isa {
            Isa::Scalar
            | Isa::ArmDsp
            | Isa::ArmMve
            | Isa::Neon
            | Isa::NeonDot
            | Isa::NeonI8mm
            | Isa::Avx => (SCALAR_ROWS * SCALAR_K * PANEL_NR) as u64,
            Isa::Avx2 => 4 * 2 * 32,
            Isa::AvxVnni => 5 * 2 * 32,
            Isa::Avx512Bw => 8 * 64,
            Isa::Avx512Vnni => 10 * 64,
        }
    }

    #[test]
    fn probes_count_their_macs_and_skip_what_the_cpu_lacks() {
        for isa in Isa::ALL {
            match int8_peak_probe(isa, 3) {
                Some(macs) => {
                    assert!(isa.supported(), "{isa:?}");
                    assert_eq!(macs, 3 * macs_per_iter(isa), "{isa:?}");
                    assert_eq!(int8_peak_probe(isa, 0), Some(0), "{isa:?}");
                }
                None => assert!(!isa.supported(), "{isa:?}"),
            }
        }
        assert!(int8_peak_probe(Isa::Scalar, 1).is_some());
    }
}
