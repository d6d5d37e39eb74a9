//! The transcendental functions of the hot paths (exp in softmax/SiLU/sampling, tanh in GELU,
//! sqrt in the q/k L2 norms): `libm` by default (correctly rounded enough to match PyTorch to
//! ~1e-6 and identical on every target), or `micromath`'s fast approximations with the
//! `fast-math` feature (for microcontrollers; its cost in tokens and PSNR is measured in
//! docs/QUANTIZATION.md). Everything else keeps using `libm`.

/// `e^x`.
#[inline]
pub fn exp(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        // micromath's exp is only valid in a bounded range; softmax/SiLU inputs below −87 are 0.
        if x < -87.0 {
            return 0.0;
        }
        micromath::F32Ext::exp(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::expf(x)
    }
}

/// `tanh(x)`.
#[inline]
pub fn tanh(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        // tanh x = 1 − 2/(e^{2x} + 1), saturated where it is ±1 in f32.
        if x > 9.0 {
            return 1.0;
        }
        if x < -9.0 {
            return -1.0;
        }
        1.0 - 2.0 / (exp(2.0 * x) + 1.0)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::tanhf(x)
    }
}

/// `√x`.
#[inline]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        micromath::F32Ext::sqrt(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::sqrtf(x)
    }
}
