//! The tensor table as a [`TensorSource`]: names, shapes, dtypes, bounds and alignment of each
//! entry checked against what the architecture asks for.

use super::finite::{all_finite_f16, finite_f32};
use super::parse::ParsedFile;
use super::{TensorDType, TensorEntry, WeightLayout};
use crate::error::{Error, Result};
use crate::kernels::{panels_len, PanelsI8};
use crate::weights::{TensorSource, Weight};
use core::fmt;
use half::f16;

/// Compares formatted output against a string without allocating.
struct NameEq<'s> {
    rest: &'s str,
    ok: bool,
}
impl fmt::Write for NameEq<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.ok && self.rest.starts_with(s) {
            self.rest = &self.rest[s.len()..];
        } else {
            self.ok = false;
        }
        Ok(())
    }
}

/// True when `name` is exactly what `args` formats to.
pub fn name_matches(name: &str, args: fmt::Arguments<'_>) -> bool {
    let mut eq = NameEq {
        rest: name,
        ok: true,
    };
    let _ = fmt::write(&mut eq, args);
    eq.ok && eq.rest.is_empty()
}

/// [`TensorSource`] over a parsed file: hands out zero-copy views, entry by entry, checking each.
pub struct FileSource<'a> {
    table: &'a [u8],
    data: &'a [u8],
    index: u32,
    count: u32,
    weights: crate::config::WeightFormat,
}

impl<'a> FileSource<'a> {
    /// Starts reading the tensor table of `file`.
    pub fn new(file: &ParsedFile<'a>) -> Self {
        FileSource {
            table: file.table,
            data: file.data,
            index: 0,
            count: file.header.tensor_count,
            weights: file.header.config.weights,
        }
    }

    /// Fails unless every table entry was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.index != self.count {
            return Err(Error::TensorMismatch {
                index: self.index,
                what: "the file has more tensors than the architecture uses",
            });
        }
        Ok(())
    }

    fn next_entry(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<TensorEntry<'a>> {
        let index = self.index;
        if index >= self.count {
            return Err(Error::TensorMismatch {
                index,
                what: "the file has fewer tensors than the architecture needs",
            });
        }
        let (entry, rest) = postcard::take_from_bytes::<TensorEntry<'a>>(self.table)
            .map_err(|_| Error::BadHeader)?;
        self.table = rest;
        self.index += 1;
        if !name_matches(entry.name, name) {
            return Err(Error::TensorMismatch {
                index,
                what: "unexpected tensor name",
            });
        }
        if entry.shape.len() != shape.len()
            || entry
                .shape
                .iter()
                .zip(shape)
                .any(|(&a, &b)| a as usize != b)
        {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor shape differs from the header's hyper-parameters",
            });
        }
        Ok(entry)
    }

    fn slice(&self, index: u32, offset: u64, len: u64, align: usize) -> Result<&'a [u8]> {
        let oob = Error::TensorOutOfBounds { index };
        let end = offset.checked_add(len).ok_or(oob)?;
        if end > self.data.len() as u64 || !(offset as usize).is_multiple_of(align) {
            return Err(oob);
        }
        Ok(&self.data[offset as usize..end as usize])
    }

    fn values<T: bytemuck::Pod>(
        &self,
        index: u32,
        e: &TensorEntry<'a>,
        numel: usize,
    ) -> Result<&'a [T]> {
        let item = core::mem::size_of::<T>();
        if e.len != (numel as u64) * item as u64 {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor byte length differs from its shape",
            });
        }
        let raw = self.slice(index, e.offset, e.len, item)?;
        bytemuck::try_cast_slice(raw).map_err(|_| Error::TensorOutOfBounds { index })
    }
}

impl<'a> TensorSource<'a> for FileSource<'a> {
    fn float(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<&'a [f32]> {
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        if e.dtype != TensorDType::F32 || e.layout != WeightLayout::Plain {
            return Err(Error::TensorMismatch {
                index,
                what: "this tensor must be stored as plain f32",
            });
        }
        finite_f32(
            index,
            self.values::<f32>(index, &e, shape.iter().product())?,
        )
    }

    fn table(
        &mut self,
        name: fmt::Arguments<'_>,
        shape: &[usize],
    ) -> Result<crate::weights::TableRows<'a>> {
        use crate::weights::TableRows;
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        if e.layout != WeightLayout::Plain {
            return Err(Error::TensorMismatch {
                index,
                what: "an AdaLN table must be stored plain",
            });
        }
        let numel: usize = shape.iter().product();
        match e.dtype {
            TensorDType::F32 => Ok(TableRows::F32(finite_f32(
                index,
                self.values(index, &e, numel)?,
            )?)),
            TensorDType::F16 => {
                let v = self.values::<f16>(index, &e, numel)?;
                if !all_finite_f16(v) {
                    return Err(Error::NonFinite { index });
                }
                Ok(TableRows::F16(v))
            }
            TensorDType::I8 | TensorDType::I8A16 => Err(Error::TensorMismatch {
                index,
                what: "an AdaLN table must be f32 or f16",
            }),
        }
    }

    fn next_is(&mut self, name: fmt::Arguments<'_>) -> bool {
        // A peek: a malformed entry is reported by the read that follows.
        self.index < self.count
            && postcard::take_from_bytes::<TensorEntry<'a>>(self.table)
                .is_ok_and(|(e, _)| name_matches(e.name, name))
    }

    fn weight(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<Weight<'a>> {
        let index = self.index;
        let e = self.next_entry(name, shape)?;
        let numel: usize = shape.iter().product();
        // Scratch is planned from the header's weight format: only an int8 file plans the int8
        // GEMM's activation scratch, so int8 tensors need an int8 header. The float paths need
        // no scratch, so an int8 file may keep any tensor in f16 or f32 (its precision plan).
        let allowed = match e.dtype {
            TensorDType::F32 => true,
            TensorDType::F16 => self.weights != crate::config::WeightFormat::F32,
            TensorDType::I8 | TensorDType::I8A16 => {
                self.weights == crate::config::WeightFormat::Int8
            }
        };
        if !allowed {
            return Err(Error::TensorMismatch {
                index,
                what: "tensor dtype differs from the header's weight format",
            });
        }
        let layout = match e.dtype {
            TensorDType::I8 | TensorDType::I8A16 => WeightLayout::PANELS,
            TensorDType::F32 | TensorDType::F16 => WeightLayout::Plain,
        };
        if e.layout != layout {
            return Err(Error::TensorMismatch {
                index,
                what: "unsupported weight layout (int8 must be 16x4 panels, floats plain)",
            });
        }
        Ok(match e.dtype {
            TensorDType::F32 => Weight::F32(finite_f32(index, self.values(index, &e, numel)?)?),
            TensorDType::F16 => {
                let v = self.values::<f16>(index, &e, numel)?;
                if !all_finite_f16(v) {
                    return Err(Error::NonFinite { index });
                }
                Weight::F16(v)
            }
            TensorDType::I8 | TensorDType::I8A16 => {
                if e.dtype == TensorDType::I8A16 && shape.len() != 2 {
                    return Err(Error::TensorMismatch {
                        index,
                        what: "two-pass activations (i8a16) apply to Linear weights only",
                    });
                }
                // Linear [out, in]: one packed weight; conv [out, in, kh, kw]: kh of them.
                let (rows, k, groups) = match *shape {
                    [rows, k] => (rows, k, 1),
                    [rows, cin, kh, kw] => (rows, cin * kw, kh),
                    _ => {
                        return Err(Error::TensorMismatch {
                            index,
                            what: "an int8 tensor must be a Linear or a conv weight",
                        })
                    }
                };
                let q = self.values::<i8>(index, &e, groups * panels_len(rows, k))?;
                let raw = self.slice(index, e.scales_offset, rows as u64 * 4, 4)?;
                let scales: &[f32] = bytemuck::try_cast_slice(raw)
                    .map_err(|_| Error::TensorOutOfBounds { index })?;
                // int8 codes are always finite; their scales are f32 and are checked.
                let scales = finite_f32(index, scales)?;
                let panels =
                    PanelsI8::new(q, scales, rows, k, groups).ok_or(Error::TensorMismatch {
                        index,
                        what: "int8 panel lengths differ from the shape",
                    })?;
                Weight::I8(panels.with_act16(e.dtype == TensorDType::I8A16))
            }
        })
    }
}
