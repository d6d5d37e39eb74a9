//! The fixed prefix and the header: every check that needs no architecture.

use super::{
    align_up, file_checksum, Header, BASE_ALIGN, FORMAT_VERSION, MAGIC, PREFIX_LEN, TENSOR_ALIGN,
};
use crate::error::{Error, Result};

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A validated view of the fixed prefix and header of an `.srdd` file.
pub struct ParsedFile<'a> {
    /// The decoded header.
    pub header: Header,
    /// The encoded tensor table (postcard records).
    pub table: &'a [u8],
    /// The data section.
    pub data: &'a [u8],
    /// The metadata text.
    pub metadata: &'a str,
}

/// Checks magic, version, length, checksum and alignment, and decodes the header.
pub fn parse(bytes: &[u8]) -> Result<ParsedFile<'_>> {
    if bytes.len() < PREFIX_LEN {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        return Err(Error::Truncated {
            expected: PREFIX_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let header_len = le_u32(bytes, 12) as usize;
    let file_len = le_u64(bytes, 16);
    if (bytes.len() as u64) < file_len {
        return Err(Error::Truncated {
            expected: file_len,
            found: bytes.len() as u64,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(BASE_ALIGN) {
        return Err(Error::Misaligned { needed: BASE_ALIGN });
    }
    if file_len < PREFIX_LEN as u64 {
        return Err(Error::BadHeader);
    }
    let file_len = file_len as usize;
    let bytes = &bytes[..file_len];
    let stored = le_u64(bytes, 24);
    let computed = file_checksum(bytes);
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    let header_end = PREFIX_LEN.checked_add(header_len).ok_or(Error::BadHeader)?;
    if header_end > file_len {
        return Err(Error::BadHeader);
    }
    let (header, table) = postcard::take_from_bytes::<Header>(&bytes[PREFIX_LEN..header_end])
        .map_err(|_| Error::BadHeader)?;
    header.config.validate()?;
    let data_start = align_up(header_end, TENSOR_ALIGN);
    let data_end = (data_start as u64).checked_add(header.data_len);
    if data_start > file_len || data_end != Some(file_len as u64) {
        return Err(Error::BadHeader);
    }
    let data = &bytes[data_start..];
    let meta_end = header
        .meta_offset
        .checked_add(header.meta_len)
        .ok_or(Error::BadHeader)?;
    if meta_end > data.len() as u64 {
        return Err(Error::BadHeader);
    }
    let metadata = core::str::from_utf8(&data[header.meta_offset as usize..meta_end as usize])
        .map_err(|_| Error::BadHeader)?;
    Ok(ParsedFile {
        header,
        table,
        data,
        metadata,
    })
}
