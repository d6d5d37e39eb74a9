//! Golden parity: every fixture under `tests/fixtures/` (discovered at run time) is packed and run
//! through `srdd_tools::parity::run_fixture` in f32, int8 and f16.
//!
//! f32 rows must pass the manifest's tolerances, plain int8 rows the documented `INT8_BOUNDS`,
//! int8 with the transformer precision plan (`transformer_plan`) the raised `PLAN_BOUNDS` of
//! issue #12; f16 is not bounded yet, so it only has to run every case without an error and
//! produce finite teacher-forcing logits.

mod common;

use srdd_core::parallel::Sequential;
use srdd_core::WeightFormat;
use srdd_tools::parity::{run_fixture, run_fixture_on, transformer_plan, FixturePlan, Row};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn table(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "  {:<22} {:<4} {} [{}]",
                r.id,
                if r.pass { "pass" } else { "FAIL" },
                r.metric,
                r.tolerance
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rows of `run_fixture` for one fixture and format, computed once per test binary.
fn cached_rows(dir: &Path, weights: WeightFormat) -> Result<Vec<Row>, String> {
    static CACHE: common::FixtureCache<Result<Vec<Row>, String>> = OnceLock::new();
    common::cached(&CACHE, dir, weights, || rows_of(dir, weights))
}

/// Runs one fixture and checks the rows cover the pack check (when both checkpoint formats are
/// present) plus every manifest case, in order.
fn rows_of(dir: &Path, weights: WeightFormat) -> Result<Vec<Row>, String> {
    let rows = run_fixture(dir, weights)
        .map_err(|e| format!("{}: run_fixture failed: {e}", dir.display()))?;
    println!("{} ({weights:?}):\n{}", dir.display(), table(&rows));
    let m = common::manifest(dir);
    // The pack check (.pth and .safetensors pack identically) runs when the fixture ships both.
    let both = dir.join("var.safetensors").is_file() && dir.join("vae.safetensors").is_file();
    let mut want = if both {
        vec!["pack".to_string()]
    } else {
        Vec::new()
    };
    want.extend(
        m["cases"]
            .as_array()
            .expect("manifest cases")
            .iter()
            .map(|c| c["id"].as_str().expect("case id").to_string()),
    );
    let got: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    if got != want {
        return Err(format!(
            "{} ({weights:?}): rows {got:?} do not match the pack check plus the manifest cases {want:?}",
            dir.display()
        ));
    }
    Ok(rows)
}

/// Runs every fixture (one thread each) in the weight format and fails with every fixture's
/// failures.
fn for_every_fixture(weights: WeightFormat, check: fn(&Path, &[Row]) -> Vec<String>) {
    check_every_fixture(&format!("{weights:?}"), |d| cached_rows(d, weights), check);
}

/// Gets each fixture's rows from `rows` (one thread each), checks them with `check`, and fails
/// with every fixture's failures, one message per fixture.
fn check_every_fixture(
    label: &str,
    rows: impl Fn(&Path) -> Result<Vec<Row>, String> + Sync,
    check: fn(&Path, &[Row]) -> Vec<String>,
) {
    let dirs: Vec<PathBuf> = common::fixture_dirs();
    let rows = &rows;
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| {
                s.spawn(move || match rows(d) {
                    Ok(rows) => {
                        let bad = check(d, &rows);
                        if bad.is_empty() {
                            None
                        } else {
                            Some(format!(
                                "{} ({label}):\n{}\nrows:\n{}",
                                d.display(),
                                bad.join("\n"),
                                table(&rows)
                            ))
                        }
                    }
                    Err(e) => Some(e),
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Some("fixture thread panicked".into()))
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n\n")
    );
}

fn all_pass(_dir: &Path, rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| !r.pass)
        .map(|r| {
            format!(
                "  case {} failed: {} (tolerance {})",
                r.id, r.metric, r.tolerance
            )
        })
        .collect()
}

/// A number following `key ` in a metric string.
fn metric_value(metric: &str, key: &str) -> Option<f64> {
    let rest = metric.split(&format!("{key} ")).nth(1)?;
    rest.split([' ', ';', '%']).next()?.parse().ok()
}

/// The rows of the manifest's cases (without the pack check), in manifest order, each with the
/// case's `kind`.
fn case_rows<'r>(dir: &Path, rows: &'r [Row]) -> impl Iterator<Item = (&'r Row, String)> {
    let kinds: Vec<String> = common::manifest(dir)["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["kind"].as_str().unwrap_or("").to_string())
        .collect();
    rows.iter().filter(|r| r.id != "pack").zip(kinds)
}

fn f16_runs(dir: &Path, rows: &[Row]) -> Vec<String> {
    let mut bad = Vec::new();
    // The pack check (when present), then one row per case.
    if let Some(p) = rows.iter().find(|r| r.id == "pack") {
        if !p.pass {
            bad.push(format!(
                "  pth and safetensors pack differently: {}",
                p.metric
            ));
        }
    }
    for (r, kind) in case_rows(dir, rows) {
        if r.metric.contains("error") {
            bad.push(format!("  case {} did not run: {}", r.id, r.metric));
            continue;
        }
        if kind == "teacher_forced" {
            // Non-finite logits show up as NaN KL / error statistics.
            for key in ["kld", "max", "rms"] {
                match metric_value(&r.metric, key) {
                    Some(v) if v.is_finite() => {}
                    other => bad.push(format!(
                        "  case {}: teacher-forced {key} is {other:?}",
                        r.id
                    )),
                }
            }
            if r.metric.contains("NaN") {
                bad.push(format!("  case {}: NaN in {}", r.id, r.metric));
            }
        }
    }
    bad
}

/// A regression guard well inside `INT8_BOUNDS`: int8 teacher forcing measures a mean KL of
/// about 0.0007 nats on these fixtures, while an engine that silently ran the Markov mask for
/// the causal cases still passes the documented bound (KL 0.010–0.018, top-1 ≥ 89%). Holding
/// int8 to 0.005 nats and 95% top-1 keeps such a mistake visible.
fn int8_teacher_forcing_is_tight(dir: &Path, rows: &[Row]) -> Vec<String> {
    let mut bad = Vec::new();
    for (r, kind) in case_rows(dir, rows) {
        if kind != "teacher_forced" {
            continue;
        }
        let kld = metric_value(&r.metric, "kld").unwrap_or(f64::NAN);
        let top1 = metric_value(&r.metric, "top1").unwrap_or(f64::NAN);
        if !(kld <= 0.005 && top1 >= 95.0) {
            bad.push(format!(
                "  case {}: kld {kld} (guard 0.005), top1 {top1}% (guard 95%)",
                r.id
            ));
        }
    }
    bad
}

/// Every fixture packed int8 with the transformer precision plan meets `PLAN_BOUNDS`: top-1
/// ≥ 99 % (≥ 98 % at every scale) and KL ≤ 1e-3 teacher forced, forced-token agreement ≥ 98 % on
/// every sample and edit case, decoder and encoder PSNR ≥ 40 dB.
#[test]
fn every_fixture_meets_the_raised_bounds_with_the_precision_plan() {
    check_every_fixture(
        "int8 + plan",
        |d| {
            let rows = run_fixture_on(
                d,
                WeightFormat::Int8,
                &FixturePlan::keep(transformer_plan()),
                &Sequential,
            )
            .map_err(|e| format!("{}: {e}", d.display()))?;
            println!("{} (int8 + plan):\n{}", d.display(), table(&rows));
            Ok(rows)
        },
        all_pass,
    );
}

/// Every fixture packed int8 with AdaLN tables (`pack --ada-table`, as the built-in model ships)
/// meets the int8 bounds and the tighter teacher-forcing guard against the official reference.
#[test]
fn every_fixture_meets_the_int8_bounds_with_ada_tables() {
    check_every_fixture(
        "int8 + AdaLN tables",
        |d| {
            let plan = FixturePlan {
                ada_tables: Some(WeightFormat::F16),
                ..FixturePlan::default()
            };
            let rows = run_fixture_on(d, WeightFormat::Int8, &plan, &Sequential)
                .map_err(|e| format!("{}: {e}", d.display()))?;
            println!("{} (int8 + AdaLN tables):\n{}", d.display(), table(&rows));
            Ok(rows)
        },
        |d, rows| {
            let mut bad = all_pass(d, rows);
            bad.extend(int8_teacher_forcing_is_tight(d, rows));
            bad
        },
    );
}

/// One `#[test]` a row: every fixture, run in the weight format, must pass the check.
macro_rules! fixture_tests {
    ($($name:ident: $format:ident => $check:ident,)*) => {
        $(
            #[test]
            fn $name() {
                for_every_fixture(WeightFormat::$format, $check);
            }
        )*
    };
}

fixture_tests! {
    every_fixture_passes_in_f32: F32 => all_pass,
    every_fixture_meets_the_int8_bounds: Int8 => all_pass,
    int8_teacher_forcing_stays_far_inside_the_bounds: Int8 => int8_teacher_forcing_is_tight,
    every_fixture_runs_in_f16: F16 => f16_runs,
}

#[test]
fn the_known_fixtures_are_discovered() {
    let names: Vec<String> = common::fixture_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["emoji32", "tiny-official-schedule", "tiny-six-scales"] {
        assert!(
            names.iter().any(|n| n == want),
            "fixture {want} not found in {names:?}"
        );
    }
}

#[test]
fn metric_parsing_finds_numbers() {
    let m = "logits_causal: psnr 89.8 dB; top1 100.0% kld 0.0000 logit err max 0.003 rms 0.0008";
    assert_eq!(metric_value(m, "kld"), Some(0.0));
    assert_eq!(metric_value(m, "max"), Some(0.003));
    assert_eq!(metric_value(m, "rms"), Some(0.0008));
    assert_eq!(metric_value(m, "top1"), Some(100.0));
    assert_eq!(metric_value(m, "psnr"), Some(89.8));
    assert!(metric_value("top1 10.0% kld NaN logit", "kld")
        .unwrap()
        .is_nan());
}
