//! `srdd-tools parity --backend cuda`'s op-by-op comparison, with the CUDA backend on the CPU
//! emulation: the built-in model and the tiny fixtures, packed f32 and int8, keep every bound
//! (forced tokens: NMSE per op, image PSNR; free greedy runs: identical tokens on f32 models).
//! `SRDD_EMU_PARITY_FIXTURES=all` (or a comma-separated list) takes other fixtures too (emoji32,
//! the built-in model's own checkpoint, adds about two minutes).

use srdd_core::aligned::AlignedBytes;
use srdd_core::parallel::StdThreads;
use srdd_core::{Model, WeightFormat};
use srdd_tools::backend_parity::{compare_fixture, compare_model, text, Backend};

#[test]
fn emulated_cuda_backend_keeps_every_parity_bound() {
    let gpu = srdd_gpu_emu::gpu();
    let par = StdThreads(2);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let bytes = AlignedBytes::read(std::path::Path::new(&format!(
        "{root}/models/default-int8.srdd"
    )))
    .expect("built-in model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("model");
    let mut reports =
        vec![compare_model("built-in", &model, Backend::Cuda, Some(&gpu), &par).expect("runs")];
    let only = std::env::var("SRDD_EMU_PARITY_FIXTURES")
        .unwrap_or_else(|_| "tiny-official-schedule,tiny-six-scales".into());
    let mut dirs: Vec<_> = std::fs::read_dir(format!("{root}/tests/fixtures"))
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if only != "all" && !only.split(',').any(|x| x == name) {
            continue;
        }
        for w in [WeightFormat::F32, WeightFormat::Int8] {
            reports.push(compare_fixture(&dir, w, Backend::Cuda, Some(&gpu), &par).expect("runs"));
        }
    }
    println!("{}", text(Backend::Cuda, &reports));
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| !r.pass())
        .map(|r| r.input.clone())
        .collect();
    assert!(failed.is_empty(), "beyond a bound: {failed:?}");
}
