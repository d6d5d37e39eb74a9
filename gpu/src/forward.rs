//! [`CudaForward`]: the forward seam on the device.

use crate::error::Result;
use crate::model::DeviceModel;
use srdd_core::forward::{Chunk, Io, Step};
use srdd_core::{Forward, SampleOptions, Schedule};

/// The CUDA backend of one sampling run (its activations and KV cache on the device).
pub struct CudaForward<'d> {
    dm: &'d DeviceModel<'d>,
    rows: usize,
}

impl<'d> CudaForward<'d> {
    /// A run of `images` images with `opts` on `sched` over the uploaded model.
    pub fn new(
        dm: &'d DeviceModel<'d>,
        opts: &SampleOptions,
        sched: &Schedule,
        images: usize,
    ) -> Result<Self> {
        let _ = (opts, sched);
        Ok(CudaForward {
            dm,
            rows: images * 2,
        })
    }

    /// The error behind the last [`srdd_core::Error::Backend`] this backend returned.
    pub fn last_error(&self) -> Option<&crate::GpuError> {
        None
    }
}

impl Forward for CudaForward<'_> {
    fn max_rows(&self) -> usize {
        self.rows
    }
    fn prepare(&mut self, _step: &Step<'_>, _io: Io<'_>) -> srdd_core::Result<()> {
        let _ = self.dm;
        Err(srdd_core::Error::Backend("not yet"))
    }
    fn logits(
        &mut self,
        _step: &Step<'_>,
        _chunk: Chunk<'_>,
        _io: Io<'_>,
    ) -> srdd_core::Result<()> {
        Err(srdd_core::Error::Backend("not yet"))
    }
    fn decode(
        &mut self,
        _f_hat: &[f32],
        _scratch: &mut [u8],
        _sink: &mut dyn FnMut(usize, &[f32]),
    ) -> srdd_core::Result<()> {
        Err(srdd_core::Error::Backend("not yet"))
    }
}
