//! Palette PNGs the `png` decoder would panic on (found by the `png` fuzz target) are refused
//! with a one-line error, and well-formed palette images still decode.

use srdd::{decode_png_rgb, HostError};

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A `side`×1 8-bit palette image, every pixel index 0, with these PLTE and tRNS chunks.
fn palette_png(side: u32, plte: &[u8], trns: Option<&[u8]>) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(1u32.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"PLTE", plte);
    if let Some(t) = trns {
        chunk(&mut png, b"tRNS", t);
    }
    // zlib, one stored block: filter byte 0, then `side` zero indices.
    let raw = vec![0u8; side as usize + 1];
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend((raw.len() as u16).to_le_bytes());
    z.extend((!(raw.len() as u16)).to_le_bytes());
    z.extend(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn refused(png: &[u8], want: &str) {
    match decode_png_rgb(png, "p.png") {
        Err(e @ HostError::Png { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn malformed_palettes_are_refused_and_good_ones_decode() {
    // The fuzz finding itself (`fuzz/reproducers/png/`): a 4-byte PLTE.
    refused(
        &palette_png(5, &[255, 0, 0, 0], Some(&[0])),
        "PLTE chunk of 4 bytes",
    );
    // 257 entries.
    refused(
        &palette_png(5, &[0; 3 * 257], None),
        "PLTE chunk of 771 bytes",
    );
    // A tRNS longer than the palette.
    refused(
        &palette_png(5, &[255, 0, 0], Some(&[0, 0])),
        "tRNS chunk of 2 entries for a palette of 1",
    );
    // Well formed: two entries, one transparent; index 0 is red at alpha 128 over white.
    let img = decode_png_rgb(
        &palette_png(5, &[255, 0, 0, 0, 0, 255], Some(&[128]))[..],
        "p.png",
    )
    .expect("decodes");
    assert_eq!((img.width, img.height), (5, 1));
    assert_eq!(&img.rgb[..3], &[255, 127, 127]);
}
