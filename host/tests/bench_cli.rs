//! `srdd bench`: the JSON report of a tiny run on the built-in model has every field with sane
//! values; a bad `--batch` is a one-line error with exit status 2.

use std::process::Command;

fn bench(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
        .arg("bench")
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn json_report_has_every_field() {
    let r = bench(&["--images", "2", "--batch", "2", "--threads", "2", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8(r.stdout).unwrap();
    assert_eq!(out.trim().lines().count(), 1, "one JSON object: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {out}"))
    };
    assert_eq!(v["images"], 2);
    assert_eq!(v["batch"], 2);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["class"], 0);
    assert!(num("images_per_s") > 0.0);
    let wall = num("wall_s");
    assert!((num("ms_per_image") - 1e3 * wall / 2.0).abs() < 1e-6 * wall.max(1.0));
    // One phase per step of the built-in model's schedule, then the decoder.
    let schedule: Vec<u64> = v["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), schedule.len() + 1, "{out}");
    for (k, pn) in schedule.iter().enumerate() {
        assert_eq!(phases[k]["phase"], "step");
        assert_eq!(phases[k]["step"], k);
        assert_eq!(phases[k]["pn"], *pn);
        assert!(phases[k]["seconds"].as_f64().unwrap() > 0.0);
    }
    let last = &phases[schedule.len()];
    assert_eq!(last["phase"], "decoder");
    assert!(last["seconds"].as_f64().unwrap() > 0.0);
    // The phases run inside the measured wall time.
    let sum: f64 = phases.iter().map(|p| p["seconds"].as_f64().unwrap()).sum();
    assert!(sum <= wall, "phases {sum} s > wall {wall} s");
    for k in ["transformer_gmac", "decoder_gmac"] {
        assert!(num(k) > 0.0, "{k}");
    }
    for k in [
        "transformer_gmac_per_s",
        "decoder_gmac_per_s",
        "int8_kernel_peak_gmac_per_s_one_thread",
        "int8_kernel_peak_gmac_per_s_ideal",
        "linear_peak_gmac_per_s_one_thread",
        "linear_peak_gmac_per_s_all_threads",
    ] {
        let x = num(k);
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    // The ideal is the one-thread peak times the pool's threads.
    let one = num("int8_kernel_peak_gmac_per_s_one_thread");
    let ideal = num("int8_kernel_peak_gmac_per_s_ideal");
    assert!(
        (ideal - 2.0 * one).abs() <= 1e-9 * ideal,
        "{one} x 2 != {ideal}"
    );
    // Fractions of a peak the layers cannot beat (a loose bound: a noisy machine may slow the
    // probe, but not by half; a unit slip would be off by orders of magnitude).
    for k in [
        "transformer_fraction_of_int8_kernel_peak",
        "decoder_fraction_of_int8_kernel_peak",
    ] {
        let x = num(k);
        assert!(x > 0.0 && x < 2.0, "{k} = {x}");
    }
    assert_eq!(v["linear_peak_shape"], serde_json::json!([64, 256, 256]));
    assert!(!v["isa"].as_str().unwrap().is_empty());
    assert_eq!(v["weights"], "Int8");
    assert_eq!(v["attention"], "Markov");
    // Linux has /proc: the peak RSS and the CPU flags are there.
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        for f in ["avx2", "avx512f", "avx512_vnni", "avxvnni"] {
            assert!(v["cpu_flags"][f].is_boolean(), "{f}: {out}");
        }
    }
}

#[test]
fn bad_batch_is_a_one_line_error() {
    for bad in ["0", "100000"] {
        let r = bench(&["--images", "2", "--batch", bad]);
        assert_eq!(r.status.code(), Some(2));
        assert!(r.stdout.is_empty());
        let err = String::from_utf8(r.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--batch"), "{err}");
    }
}
