//! Where `srdd sample` puts its images: one PNG per image with `--out-dir` (each the same bytes
//! as sampling that class and seed alone), one grid row per class with `--class a,b` or `all`,
//! `--cols`, and the neutral grid gap.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-cli-output-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn srdd(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_srdd"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Width, height and RGB8 bytes of a PNG the CLI wrote.
fn rgb(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

#[test]
fn out_dir_writes_each_image_as_sampling_it_alone_would() {
    let dir = tmp("each");
    let grid = tmp("grid.png");
    let (d, g) = (dir.to_str().unwrap(), grid.to_str().unwrap());
    srdd(&[
        "sample",
        "--class",
        "smileys,animals",
        "-n",
        "3",
        "--seed",
        "7",
        "--out-dir",
        d,
        "-o",
        g,
    ]);
    for (class, seed) in [("smileys", 7), ("smileys", 9), ("animals", 8)] {
        let alone = tmp(&format!("alone-{class}-{seed}.png"));
        srdd(&[
            "sample",
            "--class",
            class,
            "--seed",
            &seed.to_string(),
            "-o",
            alone.to_str().unwrap(),
        ]);
        let each = dir.join(format!("{class}-{seed}.png"));
        assert_eq!(
            std::fs::read(&each).unwrap(),
            std::fs::read(&alone).unwrap(),
            "{class} {seed}"
        );
    }
    // The grid: one row per class, `-n` columns, 2-pixel grey gaps; tile (row, col) is the
    // class's image of seed + col.
    let (w, h, px) = rgb(&grid);
    let (tw, th, tile) = rgb(&dir.join("animals-8.png"));
    assert_eq!((w, h), (3 * tw + 2 * 2, 2 * th + 2));
    let (x0, y0) = (tw + 2, th + 2);
    for y in 0..th {
        let at = ((y0 + y) * w + x0) * 3;
        assert_eq!(
            &px[at..at + tw * 3],
            &tile[y * tw * 3..(y + 1) * tw * 3],
            "row {y}"
        );
    }
    assert_eq!(&px[tw * 3..tw * 3 + 6], &[128; 6], "the gap is mid-grey");
}

#[test]
fn class_all_gives_a_row_per_class_and_cols_sets_the_columns() {
    let all = tmp("all.png");
    srdd(&[
        "sample",
        "--class",
        "all",
        "-n",
        "2",
        "-o",
        all.to_str().unwrap(),
    ]);
    let (w, h, _) = rgb(&all);
    // The built-in model: 9 classes of 32×32 images.
    assert_eq!((w, h), (2 * 32 + 2, 9 * 32 + 8 * 2));
    let row = tmp("row.png");
    srdd(&[
        "sample",
        "--class",
        "1",
        "-n",
        "5",
        "--cols",
        "5",
        "-o",
        row.to_str().unwrap(),
    ]);
    assert_eq!(rgb(&row).0, 5 * 32 + 4 * 2);
}
