//! Reader for `.safetensors` files (via the `safetensors` crate).
//!
//! Tensors are returned in file order (by data offset), which for files
//! written from a `state_dict()` is usually, but not necessarily, the
//! module order.

use safetensors::tensor::{Dtype, SafeTensors};

use super::{CheckpointError, DType, RawTensor};

/// Whether `bytes` looks like a safetensors file: an 8-byte little-endian
/// header length that fits in the file, followed by a JSON object.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    n >= 2 && n <= (bytes.len() as u64 - 8) && bytes[8] == b'{'
}

fn convert_dtype(d: Dtype) -> Result<DType, CheckpointError> {
    Ok(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        other => return Err(CheckpointError::UnsupportedDType(format!("{other:?}"))),
    })
}

/// Parses a whole safetensors buffer into `(key, tensor)` pairs.
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)?;
    let st = SafeTensors::deserialize(bytes)?;
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let view = st.tensor(&name)?;
            let tensor = RawTensor {
                dtype: convert_dtype(view.dtype())?,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            Ok((name, tensor))
        })
        .collect()
}
