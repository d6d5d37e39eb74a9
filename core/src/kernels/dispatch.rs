//! The one place that picks the instruction set the kernels run on.
//!
//! On x86-64 every SIMD kernel is compiled in with `#[target_feature]`, whatever the build's
//! target CPU, so one binary runs the best kernels of whatever machine it lands on: with `std`,
//! [`Isa::supported`] asks the CPU (`is_x86_feature_detected!`, cached by std) and
//! [`Isa::active`] takes the best. Without `std` (the firmware, `nostd-check`) only the ISAs the
//! compile-time target features guarantee count. AArch64 works the same way: the NEON, dot
//! product and int8 matrix multiply kernels are always compiled in (`#[target_feature]`), and
//! with `std` the CPU is asked (`is_aarch64_feature_detected!`). On Arm, [`Isa::ArmDsp`] (the Cortex-M4/M7 DSP
//! extension) is compiled only for a DSP core: Arm target features are unstable in Rust, so
//! `cfg(target_feature = "dsp")` is set on nightly only, and stable builds for a DSP core
//! (`thumbv7em-*`) say so with the core's `arm-dsp` cargo feature (the firmware does). Likewise
//! [`Isa::ArmMve`] (Helium, Cortex-M55) with `arm-mve` (the firmware's M55 build). Enabled for a
//! core without the extension, the build fails at the assembler rather than running a bad kernel.
//! The scalar reference is always compiled, and every kernel with a SIMD variant has a
//! `*_with(isa, …)` form, so tests run them all and compare bits (the Arm kernel on the
//! Cortex-M4 under QEMU: `firmware/src/bin/kernels.rs`).

/// An instruction set the kernels can run on, ordered from the portable reference upwards (each
/// x86 one's CPUs also have the x86 ones before it, except that AVX-VNNI and AVX-512BW are
/// independent: a CPU may have either). The Arm ISAs ([`Isa::ArmDsp`], [`Isa::ArmMve`],
/// [`Isa::Neon`], [`Isa::NeonDot`], [`Isa::NeonI8mm`]) sit below every x86 ISA, so the x86 checks
/// `isa >= Isa::Avx2` never hold for them; [`Isa::best`] prefers MVE over DSP on a Cortex-M55
/// (which has both), and on AArch64 `smmla` over `sdot` over plain NEON (a CPU may have i8mm
/// without the dot product).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The portable reference loops, compiled on every target (Cortex-M included).
    Scalar,
    /// Armv7E-M DSP extension (Cortex-M4/M7): the int8 GEMM on `SMLAD` of `SXTB16` pairs
    /// (`arch/arm_dsp.rs`).
    ArmDsp,
    /// Armv8.1-M MVE (Helium, Cortex-M55/M85; the core has the DSP extension too): the int8
    /// GEMM on word gathers and `VMLADAVA.S8` (`arch/arm_mve.rs`).
    ArmMve,
    /// AArch64 Advanced SIMD (every AArch64 CPU): the int8 GEMM on `smull` + `sadalp`
    /// (`arch/aarch64_gemm.rs`).
    Neon,
    /// AArch64 dot product extension (`FEAT_DotProd`): the int8 GEMM on `sdot` by element.
    NeonDot,
    /// AArch64 int8 matrix multiply extension (`FEAT_I8MM`): the int8 GEMM on `smmla`.
    NeonI8mm,
    /// x86-64 AVX: the f32 register blocks of Linear and the stride-1 conv tiles.
    Avx,
    /// x86-64 AVX2: AVX plus the int8 GEMM on `vpmaddubsw` (sign trick, cannot saturate).
    Avx2,
    /// x86-64 AVX2 + AVX-VNNI: the int8 GEMM on ymm `vpdpbusd`.
    AvxVnni,
    /// x86-64 AVX-512F/BW (and AVX2): the int8 GEMM on zmm `vpmaddubsw`.
    Avx512Bw,
    /// x86-64 AVX-512F/BW + AVX-512 VNNI (and AVX2): the int8 GEMM on zmm `vpdpbusd`.
    Avx512Vnni,
}

impl Isa {
    /// Every ISA, reference first.
    pub const ALL: [Isa; 11] = [
        Isa::Scalar,
        Isa::ArmDsp,
        Isa::ArmMve,
        Isa::Neon,
        Isa::NeonDot,
        Isa::NeonI8mm,
        Isa::Avx,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Bw,
        Isa::Avx512Vnni,
    ];

    /// Whether this build contains the kernels of `self`: on x86-64 all the x86 ones (compiled
    /// with `#[target_feature]`), on AArch64 the three AArch64 ones (likewise), on Arm
    /// [`Isa::ArmDsp`] when the build targets a DSP core, and the scalar reference everywhere.
    pub const fn compiled(self) -> bool {
        const ARM_DSP: bool = cfg!(all(
            target_arch = "arm",
            any(target_feature = "dsp", feature = "arm-dsp")
        ));
        const ARM_MVE: bool = cfg!(all(target_arch = "arm", feature = "arm-mve"));
        const X86: bool = cfg!(target_arch = "x86_64");
        const AARCH64: bool = cfg!(target_arch = "aarch64");
        match self {
            Isa::Scalar => true,
            Isa::ArmDsp => ARM_DSP,
            Isa::ArmMve => ARM_MVE,
            Isa::Neon | Isa::NeonDot | Isa::NeonI8mm => AARCH64,
            _ => X86,
        }
    }

    /// Whether `self` can run here: compiled in and present on this CPU (with `std`, asked at
    /// run time; without it, guaranteed by the compile-time target features).
    pub fn supported(self) -> bool {
        if !self.compiled() {
            return false;
        }
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx") && has!("avx2");
            match self {
                Isa::Scalar => true,
                Isa::ArmDsp | Isa::ArmMve | Isa::Neon | Isa::NeonDot | Isa::NeonI8mm => false,
                Isa::Avx => has!("avx"),
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && has!("avxvnni"),
                Isa::Avx512Bw => avx2 && has!("avx512f") && has!("avx512bw"),
                Isa::Avx512Vnni => {
                    avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
                }
            }
        }
        #[cfg(all(feature = "std", target_arch = "aarch64"))]
        {
            use std::arch::is_aarch64_feature_detected as has;
            match self {
                Isa::Scalar => true,
                Isa::Neon => has!("neon"),
                Isa::NeonDot => has!("neon") && has!("dotprod"),
                Isa::NeonI8mm => has!("neon") && has!("i8mm"),
                // Not compiled for AArch64 (checked above).
                _ => false,
            }
        }
        #[cfg(not(all(feature = "std", any(target_arch = "x86_64", target_arch = "aarch64"))))]
        {
            let avx2 = cfg!(all(target_feature = "avx", target_feature = "avx2"));
            let avx512 = avx2 && cfg!(all(target_feature = "avx512f", target_feature = "avx512bw"));
            match self {
                // Compiled only for a DSP (MVE) core (checked above).
                Isa::Scalar | Isa::ArmDsp | Isa::ArmMve => true,
                // Compiled only for AArch64 (checked above), so an Arm32 "neon" feature (which
                // a Cortex-M55 target-cpu may report) never reaches these.
                Isa::Neon => cfg!(target_feature = "neon"),
                Isa::NeonDot => cfg!(all(target_feature = "neon", target_feature = "dotprod")),
                Isa::NeonI8mm => cfg!(all(target_feature = "neon", target_feature = "i8mm")),
                Isa::Avx => cfg!(target_feature = "avx"),
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && cfg!(target_feature = "avxvnni"),
                Isa::Avx512Bw => avx512,
                Isa::Avx512Vnni => avx512 && cfg!(target_feature = "avx512vnni"),
            }
        }
    }

    /// The best supported ISA (the last supported one of [`Isa::ALL`]).
    pub fn best() -> Isa {
        let mut best = Isa::Scalar;
        for isa in Isa::ALL {
            if isa.supported() {
                best = isa;
            }
        }
        best
    }

    /// The ISA the plain kernels ([`super::linear()`], [`super::conv2d`]) use: [`Isa::best`], or
    /// [`Isa::Scalar`] with the core's `force-scalar-kernels` feature (the firmware's baseline
    /// for instruction counts: the same scalar code, only never leaving it). Not cached here:
    /// the core keeps no global state, and std's feature detection is already a cached load.
    pub fn active() -> Isa {
        if cfg!(feature = "force-scalar-kernels") {
            return Isa::Scalar;
        }
        Isa::best()
    }

    /// Whether the f32 AVX blocks run on `self` (every x86 SIMD ISA here includes AVX).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn has_avx(self) -> bool {
        self >= Isa::Avx
    }
}
