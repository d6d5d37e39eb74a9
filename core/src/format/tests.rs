//! Loader tests on the built-in model: non-finite values, checksums, retagged entries.

extern crate std;

use super::*;
use crate::error::Error;
use crate::Model;
use half::f16;
use std::vec::Vec;

/// The built-in model (int8 weights, f32 norms, biases and embeddings).
static BUILTIN: &crate::aligned::Aligned<[u8]> =
    &crate::aligned::Aligned(*include_bytes!("../../../models/default-int8.srdd"));

/// A 64-byte aligned, writable copy of `bytes`.
fn aligned_copy(bytes: &[u8]) -> Vec<[u64; 8]> {
    let mut words = std::vec![[0u64; 8]; bytes.len().div_ceil(64)];
    bytemuck::cast_slice_mut::<_, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

/// Stores a fresh checksum, as a tool that edits the weights on purpose would.
fn reseal(bytes: &mut [u8]) {
    let sum = file_checksum(bytes);
    bytes[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// Table index and absolute byte offset of the first f32 tensor's first value, and of the
/// first int8 tensor's first scale.
fn first_f32_and_first_scale(bytes: &[u8]) -> ((u32, usize), (u32, usize)) {
    let file = parse(bytes).expect("the built-in model parses");
    let data_at = file.data.as_ptr() as usize - bytes.as_ptr() as usize;
    let (mut f32_at, mut scale_at) = (None, None);
    let mut table = file.table;
    for index in 0..file.header.tensor_count {
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).unwrap();
        table = rest;
        match e.dtype {
            TensorDType::F32 if f32_at.is_none() => {
                f32_at = Some((index, data_at + e.offset as usize))
            }
            TensorDType::I8 if scale_at.is_none() => {
                scale_at = Some((index, data_at + e.scales_offset as usize))
            }
            _ => {}
        }
    }
    (f32_at.unwrap(), scale_at.unwrap())
}

#[test]
fn non_finite_weights_are_refused_with_their_table_entry() {
    let n = BUILTIN.0.len();
    let ((f32_index, f32_at), (scale_index, scale_at)) = first_f32_and_first_scale(&BUILTIN.0);
    assert!(
        Model::from_bytes(&BUILTIN.0).is_ok(),
        "the built-in model loads"
    );
    for (index, at, value) in [
        (f32_index, f32_at, f32::NAN),
        (f32_index, f32_at + 4, f32::NEG_INFINITY),
        (scale_index, scale_at, f32::INFINITY),
        (scale_index, scale_at + 8, -f32::NAN),
    ] {
        let mut words = aligned_copy(&BUILTIN.0);
        let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        reseal(bytes);
        let err = Model::from_bytes(bytes).err();
        assert_eq!(
            err,
            Some(Error::NonFinite { index }),
            "{value} at byte {at}"
        );
        assert_eq!(
            std::format!("{}", err.unwrap()),
            std::format!("tensor table entry {index} holds a non-finite value (NaN or infinity)")
        );
    }
    // The largest finite values and subnormals are fine.
    for value in [f32::MAX, f32::MIN, f32::MIN_POSITIVE / 2.0, -0.0] {
        let mut words = aligned_copy(&BUILTIN.0);
        let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
        bytes[f32_at..f32_at + 4].copy_from_slice(&value.to_le_bytes());
        reseal(bytes);
        assert!(Model::from_bytes(bytes).is_ok(), "{value}");
    }
}

/// Byte offset in `bytes` and the entry itself of the first table entry `pick` accepts.
fn find_entry(
    bytes: &[u8],
    pick: impl Fn(&TensorEntry<'_>) -> bool,
) -> (usize, usize, TensorEntry<'static>) {
    let file = parse(bytes).unwrap();
    let mut table = file.table;
    for index in 0..file.header.tensor_count as usize {
        let at = table.as_ptr() as usize - bytes.as_ptr() as usize;
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).unwrap();
        table = rest;
        if pick(&e) {
            let name: &'static str = std::boxed::Box::leak(e.name.into());
            return (index, at, TensorEntry { name, ..e });
        }
    }
    panic!("no such entry");
}

/// Two-pass activations are a Linear's: a conv entry tagged `I8A16` is refused, a Linear's
/// loads as the int8 weight with `act16` set, and untagged int8 has it off.
#[test]
fn two_pass_activations_load_on_linears_only() {
    let n = BUILTIN.0.len();
    let int8 = |e: &TensorEntry<'_>| matches!(e.dtype, TensorDType::I8 | TensorDType::I8A16);
    let retagged = |pick: &dyn Fn(&TensorEntry<'_>) -> bool, dtype| {
        let (index, at, e) = find_entry(&BUILTIN.0, pick);
        let mut words = aligned_copy(&BUILTIN.0);
        let bytes = &mut bytemuck::cast_slice_mut::<_, u8>(&mut words)[..n];
        let mut old = [0u8; 256];
        let old_len = postcard::to_slice(&e, &mut old).unwrap().len();
        let mut new = [0u8; 256];
        let new = postcard::to_slice(&TensorEntry { dtype, ..e.clone() }, &mut new).unwrap();
        assert_eq!(new.len(), old_len, "same encoded length");
        bytes[at..at + old_len].copy_from_slice(new);
        reseal(bytes);
        (index, e.name, words)
    };
    let (index, name, words) = retagged(&|e| int8(e) && e.shape.len() == 4, TensorDType::I8A16);
    let bytes = &bytemuck::cast_slice::<_, u8>(&words)[..n];
    let err = Model::from_bytes(bytes).err();
    assert_eq!(
        err,
        Some(Error::TensorMismatch {
            index: index as u32,
            what: "two-pass activations (i8a16) apply to Linear weights only",
        }),
        "{name}"
    );
    for dtype in [TensorDType::I8A16, TensorDType::I8] {
        let pick = |e: &TensorEntry<'_>| int8(e) && e.name == "blocks.3.ffn.fc2.weight";
        let (_, name, words) = retagged(&pick, dtype);
        let bytes = &bytemuck::cast_slice::<_, u8>(&words)[..n];
        let m = Model::from_bytes(bytes).expect("loads");
        match m.weights.var.blocks[3].fc2.w {
            crate::kernels::Weight::I8(p) => {
                assert_eq!(p.act16, dtype == TensorDType::I8A16, "{name}")
            }
            _ => panic!("{name} is int8"),
        }
    }
}

#[test]
fn chunked_checksum_equals_whole() {
    let bytes: Vec<u8> = (0..1000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in [0usize, 1, 7, 8, 9, 63, 64, 999, 1000] {
        let whole = checksum64(&bytes[..len]);
        for piece in [1usize, 3, 8, 13, 64, 1000] {
            let mut c = Checksum64::new();
            for chunk in bytes[..len].chunks(piece) {
                c.update(chunk);
            }
            assert_eq!(c.finish(), whole, "len {len}, pieces of {piece}");
        }
        // Uneven pieces, including empty ones.
        let mut c = Checksum64::new();
        let mut at = 0;
        for (i, step) in [0usize, 5, 0, 2, 11, 1, 30].iter().cycle().enumerate() {
            if at >= len || i > 10_000 {
                break;
            }
            let end = (at + step).min(len);
            c.update(&bytes[at..end]);
            at = end;
        }
        c.update(&bytes[at..len]);
        assert_eq!(c.finish(), whole, "len {len}, uneven pieces");
    }
    // The file checksum: bytes 8..24, then 32.., in pieces.
    let file = &BUILTIN.0;
    let mut c = Checksum64::new();
    c.update(&file[8..24]);
    for chunk in file[PREFIX_LEN..].chunks(4093) {
        c.update(chunk);
    }
    assert_eq!(c.finish(), file_checksum(file));
}

#[test]
fn finiteness_checks_see_every_non_finite_bit_pattern() {
    // Every f16: finite iff its exponent bits are not all ones.
    let all16: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    for x in &all16 {
        assert_eq!(
            all_finite_f16(core::slice::from_ref(x)),
            x.is_finite(),
            "{x:?}"
        );
    }
    // f32 around the boundaries of the exponent field, both signs, at every position of a
    // slice long enough for the vectorized loop.
    let edges = [
        0x7f7f_ffffu32,
        0x7f80_0000,
        0x7f80_0001,
        0x7fc0_0000,
        0x7fff_ffff,
        0,
        1,
    ];
    for bits in edges.iter().flat_map(|&b| [b, b | 0x8000_0000]) {
        let x = f32::from_bits(bits);
        for pos in [0usize, 7, 63, 64, 99] {
            let mut v = std::vec![1.0f32; 100];
            v[pos] = x;
            assert_eq!(all_finite_f32(&v), x.is_finite(), "{bits:#010x} at {pos}");
            let mut h = std::vec![f16::ONE; 100];
            h[pos] = f16::from_f32(x);
            assert_eq!(
                all_finite_f16(&h),
                h[pos].is_finite(),
                "{bits:#010x} at {pos}"
            );
        }
    }
    assert!(all_finite_f32(&[]) && all_finite_f16(&[]));
}
