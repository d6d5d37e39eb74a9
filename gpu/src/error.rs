//! The typed errors of the CUDA backend: each prints as one line.

use std::fmt;

/// Why the CUDA backend could not start or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuError {
    /// No CUDA driver library (`libcuda.so`) could be loaded.
    NoDriver,
    /// The driver loaded but reports no CUDA device (or none at the asked ordinal).
    NoDevice,
    /// No NVRTC library (`libnvrtc.so.13`) could be loaded.
    NoNvrtc,
    /// NVRTC rejected the kernels (the log's first lines).
    Compile(String),
    /// A driver call failed (which call, and the driver's error).
    Driver(String),
    /// The model or the run has a shape this backend does not implement.
    Unsupported(&'static str),
    /// The core refused the run (plan, options, shapes).
    Core(srdd_core::Error),
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoDriver => write!(
                f,
                "no CUDA driver found (libcuda.so could not be loaded); use --backend cpu"
            ),
            GpuError::NoDevice => write!(f, "the CUDA driver reports no usable device"),
            GpuError::NoNvrtc => write!(
                f,
                "no NVRTC library found (libnvrtc.so.13); install the nvidia-cuda-nvrtc wheel \
                 or the CUDA toolkit and add its lib folder to LD_LIBRARY_PATH"
            ),
            GpuError::Compile(log) => write!(f, "NVRTC could not compile the kernels: {log}"),
            GpuError::Driver(what) => write!(f, "CUDA driver call failed: {what}"),
            GpuError::Unsupported(what) => write!(f, "the CUDA backend does not support {what}"),
            GpuError::Core(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GpuError {}

impl From<srdd_core::Error> for GpuError {
    fn from(e: srdd_core::Error) -> Self {
        GpuError::Core(e)
    }
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver(format!("{e:?}"))
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, GpuError>;
