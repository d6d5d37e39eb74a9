//! Reader for `.safetensors` files (via the `safetensors` crate).
//!
//! Tensors are returned in file order (by data offset), which for files
//! written from a `state_dict()` is usually, but not necessarily, the
//! module order.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use safetensors::SafeTensorError;

use super::{read_up_to, CheckpointError, DType, RawTensor};

/// Largest header the `safetensors` crate accepts (its `MAX_HEADER_SIZE`).
const MAX_HEADER_SIZE: u64 = 100_000_000;

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

/// One tensor of a lazily read safetensors file.
pub(crate) struct LazyEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// Reads the header of the safetensors file `file` (`file_len` bytes, positioned anywhere) and
/// returns its tensors in file order, as [`read`] does, without reading any tensor data. The
/// header is checked as `SafeTensors::read_metadata` checks it (size limit, UTF-8, offsets that
/// tile the data section, data section ending at the end of the file).
pub(crate) fn read_lazy(
    file: &mut File,
    file_len: u64,
) -> Result<Vec<(String, LazyEntry)>, CheckpointError> {
    file.rewind()?;
    let mut len = [0u8; 8];
    if read_up_to(file, &mut len)? < 8 {
        return Err(SafeTensorError::HeaderTooSmall.into());
    }
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_SIZE {
        return Err(SafeTensorError::HeaderTooLarge.into());
    }
    if n > file_len - 8 {
        return Err(SafeTensorError::InvalidHeaderLength.into());
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)?;
    let text = std::str::from_utf8(&header).map_err(SafeTensorError::InvalidHeader)?;
    let metadata: Metadata =
        serde_json::from_str(text).map_err(SafeTensorError::InvalidHeaderDeserialization)?;
    let data_start = 8 + n;
    if data_start + metadata.data_len() as u64 != file_len {
        return Err(SafeTensorError::MetadataIncompleteBuffer.into());
    }
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata.info(&name).expect("offset_keys are keys");
            let (s, e) = info.data_offsets;
            let entry = LazyEntry {
                dtype: convert_dtype(info.dtype)?,
                shape: info.shape.clone(),
                start: data_start + s as u64,
                end: data_start + e as u64,
            };
            Ok((name, entry))
        })
        .collect()
}

/// Reads one tensor's bytes.
pub(crate) fn load(file: &mut File, e: &LazyEntry) -> Result<RawTensor, CheckpointError> {
    file.seek(SeekFrom::Start(e.start))?;
    let mut data = vec![0u8; (e.end - e.start) as usize];
    file.read_exact(&mut data)?;
    Ok(RawTensor {
        dtype: e.dtype,
        shape: e.shape.clone(),
        data,
    })
}
