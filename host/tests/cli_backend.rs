//! `srdd sample --backend cpu|cuda|auto` end to end: on a machine without a CUDA driver (this
//! one and CI), `cuda` is one typed line with exit status 2 and `auto` samples on the CPU,
//! byte for byte as `cpu` does.

use std::path::PathBuf;
use std::process::{Command, Output};

fn srdd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-cli-backend-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The sampling settings every run here shares: the built-in model, a 2×2 grid of class 3.
fn sample_args(backend: &str, out: &std::path::Path) -> Vec<String> {
    [
        "sample",
        "--class",
        "3",
        "--seed",
        "5",
        "-n",
        "4",
        "--batch",
        "2",
        "--threads",
        "2",
        "--backend",
        backend,
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

fn run_sample(backend: &str, out: &std::path::Path, json: bool) -> Output {
    let mut args = sample_args(backend, out);
    if json {
        args.push("--json".into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    srdd(&a)
}

#[test]
fn cuda_without_a_driver_is_one_line_and_status_2() {
    if srdd_gpu::driver_present() {
        println!("skipped: a CUDA driver is present");
        return;
    }
    let out = tmp("cuda.png");
    let o = run_sample("cuda", &out, false);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(
        err,
        "srdd: no CUDA driver found (libcuda.so could not be loaded); use --backend cpu\n"
    );
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(!out.exists(), "nothing is written");
    // Any spelling of the value, like the other value enums.
    let o = run_sample("CUDA", &out, false);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no CUDA driver found"));
}

#[test]
fn auto_without_a_driver_samples_on_the_cpu_like_cpu() {
    if srdd_gpu::driver_present() {
        println!("skipped: a CUDA driver is present");
        return;
    }
    let (cpu, auto) = (tmp("cpu.png"), tmp("auto.png"));
    let c = run_sample("cpu", &cpu, false);
    assert!(c.status.success(), "{}", text(&c.stderr));
    let a = run_sample("auto", &auto, false);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(std::fs::read(&cpu).unwrap(), std::fs::read(&auto).unwrap());
    // The timing line says where it ran.
    for o in [&c, &a] {
        let err = text(&o.stderr);
        let last = err.trim_end().lines().last().unwrap();
        assert!(last.starts_with("done: 4 images in "), "{err}");
        assert!(last.ends_with(", 2 threads, backend cpu"), "{err}");
    }
    // And so does the JSON record (no `device` on the CPU).
    let j = run_sample("auto", &tmp("auto-json.png"), true);
    assert!(j.status.success(), "{}", text(&j.stderr));
    assert!(j.stderr.is_empty(), "{}", text(&j.stderr));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["backend"], "cpu", "{v}");
    assert!(v.get("device").is_none(), "{v}");
    assert_eq!(v["images"], 4, "{v}");
}

#[test]
fn the_default_backend_is_cpu() {
    let (dflt, cpu) = (tmp("default.png"), tmp("cpu-explicit.png"));
    let args: Vec<String> = sample_args("cpu", &dflt)
        .into_iter()
        .filter(|a| a != "--backend" && a != "cpu")
        .collect();
    assert!(!args.iter().any(|a| a == "--backend"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = srdd(&a);
    assert!(d.status.success(), "{}", text(&d.stderr));
    assert!(text(&d.stderr).trim_end().ends_with(", backend cpu"));
    assert!(run_sample("cpu", &cpu, false).status.success());
    assert_eq!(std::fs::read(&dflt).unwrap(), std::fs::read(&cpu).unwrap());
}

#[test]
fn an_unknown_backend_is_a_usage_error() {
    let out = tmp("nonsense.png");
    let o = run_sample("nonsense", &out, false);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("srdd: invalid value 'nonsense' for '--backend <BACKEND>'"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn bench_takes_the_backend_too() {
    if srdd_gpu::driver_present() {
        println!("skipped: a CUDA driver is present");
        return;
    }
    let small = ["bench", "--images", "2", "--batch", "2", "--threads", "1"];
    let with = |backend: &str, json: bool| {
        let mut a = small.to_vec();
        a.extend(["--backend", backend]);
        if json {
            a.push("--json");
        }
        srdd(&a)
    };
    let o = with("cuda", false);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o.stderr),
        "srdd: no CUDA driver found (libcuda.so could not be loaded); use --backend cpu\n"
    );
    assert!(o.stdout.is_empty());
    let o = with("auto", true);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backend"], "cpu", "{v}");
    assert!(v["device"].is_null(), "{v}");
    let o = with("cpu", false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("settings: backend cpu, threads 1, batch 2"),
        "{}",
        text(&o.stdout)
    );
}
