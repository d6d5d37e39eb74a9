//! The one place that picks the instruction set the kernels run on.
//!
//! Today the SIMD kernels are compiled in by target features (`.cargo/config.toml` builds x86-64
//! hosts for x86-64-v3), so [`Isa::compiled`] is a compile-time answer. With `std`,
//! [`Isa::supported`] also asks the CPU (std caches the answer) and [`Isa::active`] takes the best:
//! this is where runtime choices (AVX2 or AVX-512 VNNI kernels compiled with
//! `#[target_feature]`) plug in. The scalar reference is always compiled, and every kernel with a
//! SIMD variant has a `*_with(isa, …)` form, so tests can run both and compare bits.

/// An instruction set the kernels can run on, ordered from the portable reference upwards (each
/// one includes the kernels of the ones before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The portable reference loops, compiled on every target (Cortex-M included).
    Scalar,
    /// x86-64 AVX: the f32 register blocks of Linear and the stride-1 conv tiles.
    Avx,
    /// x86-64 AVX2: AVX plus the int8 `vpmaddwd` blocks of Linear and Conv.
    Avx2,
}

impl Isa {
    /// Every ISA, reference first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx, Isa::Avx2];

    /// Whether this build contains the kernels of `self` (decided by the compile-time target
    /// features).
    pub const fn compiled(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx => cfg!(all(target_arch = "x86_64", target_feature = "avx")),
            Isa::Avx2 => cfg!(all(
                target_arch = "x86_64",
                target_feature = "avx",
                target_feature = "avx2"
            )),
        }
    }

    /// Whether `self` can run here: compiled in and, with `std`, present on this CPU.
    pub fn supported(self) -> bool {
        if !self.compiled() {
            return false;
        }
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            match self {
                Isa::Scalar => true,
                Isa::Avx => std::is_x86_feature_detected!("avx"),
                Isa::Avx2 => {
                    std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("avx2")
                }
            }
        }
        #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
        true
    }

    /// The widest supported ISA.
    pub fn best() -> Isa {
        let mut best = Isa::Scalar;
        for isa in Isa::ALL {
            if isa.supported() {
                best = isa;
            }
        }
        best
    }

    /// The ISA the plain kernels ([`super::linear()`], [`super::conv2d`]) use: [`Isa::best`].
    /// Not cached here: the core keeps no global state, and std's feature detection is already
    /// a cached load.
    pub fn active() -> Isa {
        Isa::best()
    }
}
