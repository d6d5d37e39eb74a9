//! The compute backend of `srdd sample` (`--backend cpu|cuda|auto`): the CPU engine, or the
//! CUDA backend (`srdd-gpu`) on device 0. Either way the same [`Sampler`] and the same
//! stepping/decoding loop ([`crate::run_batch`]) run; only the [`srdd_core::Forward`] differs.

use crate::args::BackendChoice;
use crate::{run_batch, Image, ResampleChoice};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Compute, Plan, SampleOptions, Sampler};
use srdd_core::parallel::Parallel;
use srdd_core::{Model, Schedule};
use srdd_gpu::{CudaForward, DeviceModel, Gpu, GpuError};

/// The backend a command runs on, opened once for all of its batches.
pub enum Backend {
    /// The CPU engine.
    Cpu,
    /// CUDA device 0, its kernels compiled.
    Cuda(Gpu),
}

/// What [`Backend::open`] settled on.
pub struct Opened {
    /// The backend to run on.
    pub backend: Backend,
    /// With `auto`: why CUDA was not taken although a driver is present (no device, no NVRTC,
    /// kernels that do not compile…); `None` otherwise, and when there is simply no driver.
    pub fallback: Option<GpuError>,
}

impl Backend {
    /// Opens the backend `choice` names: `cuda` fails when device 0 cannot be opened
    /// ([`GpuError::NoDriver`] on a machine without CUDA); `auto` takes CUDA when a driver is
    /// present and device 0 opens, else the CPU.
    pub fn open(choice: BackendChoice) -> Result<Opened, GpuError> {
        let cpu = |fallback| Opened {
            backend: Backend::Cpu,
            fallback,
        };
        match choice {
            BackendChoice::Cpu => Ok(cpu(None)),
            BackendChoice::Cuda => Ok(Opened {
                backend: Backend::Cuda(Gpu::open(0)?),
                fallback: None,
            }),
            BackendChoice::Auto if !srdd_gpu::driver_present() => Ok(cpu(None)),
            BackendChoice::Auto => match Gpu::open(0) {
                Ok(gpu) => Ok(Opened {
                    backend: Backend::Cuda(gpu),
                    fallback: None,
                }),
                Err(e) => Ok(cpu(Some(e))),
            },
        }
    }

    /// The backend's name as `--backend` spells it: `cpu` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }

    /// The device's name (the GPU's, as its driver reports it), or `None` on the CPU.
    pub fn device(&self) -> Option<&str> {
        match self {
            Backend::Cpu => None,
            Backend::Cuda(gpu) => Some(gpu.name()),
        }
    }
}

/// Samples `images` images as one batch on the CUDA backend, over weights uploaded once
/// ([`DeviceModel::upload`]): image `i` with seed `opts.seed + i`, its own policy instance,
/// `on_step` after each scale of each image; the same loop as [`crate::sample_batch`]. When
/// the core reports [`srdd_core::Error::Backend`], the error is the backend's own
/// ([`CudaForward::last_error`]), which says which call failed.
#[allow(clippy::too_many_arguments)]
pub fn sample_batch_cuda(
    dm: &DeviceModel<'_>,
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    images: usize,
    policy: &ResampleChoice,
    par: &dyn Parallel,
    on_step: &dyn Fn(),
) -> Result<Vec<Image>, GpuError> {
    let forward = CudaForward::new(dm, &opts, sched, images)?;
    let plan = Plan::batch(&model.config, &opts, sched, images, Compute::Device)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut sampler = Sampler::with_forward(
        model,
        opts,
        sched.clone(),
        images,
        arena.as_bytes_mut(),
        forward,
        par,
    )?;
    run_batch(model, &mut sampler, policy, on_step).map_err(|e| match e {
        srdd_core::Error::Backend(_) => sampler
            .forward()
            .last_error()
            .cloned()
            .unwrap_or(GpuError::Core(e)),
        e => GpuError::Core(e),
    })
}
