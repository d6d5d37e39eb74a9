//! The automatic precision plan (`srdd-tools pack --weights int8 --max-growth`): it stays within
//! its byte budget, a zero budget is the plain int8 file, a larger budget measures no worse,
//! its figures are those of the file it writes, and bad options are refused in one line.

use srdd_core::aligned::AlignedBytes;
use srdd_core::parallel::Sequential;
use srdd_core::{Model, WeightFormat};
use srdd_tools::checkpoint::{read_state_dict, Role, StateDict};
use srdd_tools::convert::{pack, KeepRule, PackOptions};
use srdd_tools::plan::{auto_plan, AutoPlan, AutoPlanOptions, Growth, PlanError};
use srdd_tools::quant_report;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Calibration images: few, so each plan takes about a second (plain int8 misses the top-1
/// target at scale 1 on them).
const CALIB: usize = 4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-six-scales")
}

fn state_dicts() -> (StateDict, StateDict) {
    let read = |stem: &str, role| {
        let p = fixture().join(format!("{stem}.safetensors"));
        read_state_dict(&p, role).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    (read("var", Role::Var), read("vae", Role::Vae))
}

fn options(keep: &[&str]) -> PackOptions {
    PackOptions {
        weights: WeightFormat::Int8,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        keep: keep.iter().map(|k| KeepRule::parse(k).unwrap()).collect(),
        ..PackOptions::default()
    }
}

fn plan(sd: &(StateDict, StateDict), growth: Growth) -> AutoPlan {
    let auto = AutoPlanOptions {
        max_growth: growth,
        calib: CALIB,
        ..AutoPlanOptions::default()
    };
    auto_plan(&sd.0, &sd.1, &options(&[]), &auto).expect("plans")
}

/// The file packed with the plan's rules.
fn packed(sd: &(StateDict, StateDict), p: &AutoPlan) -> Vec<u8> {
    let opts = PackOptions {
        keep: p.keep.clone(),
        ..options(&[])
    };
    pack(&sd.0, &sd.1, &opts).unwrap()
}

#[test]
fn the_plan_stays_within_its_budget_and_a_larger_one_measures_no_worse() {
    let sd = state_dicts();
    let plain = pack(&sd.0, &sd.1, &options(&[])).unwrap();
    let mut last: Option<AutoPlan> = None;
    for budget in [8_000u64, 40_000, 160_000] {
        let p = plan(&sd, Growth::Bytes(budget));
        let file = packed(&sd, &p);
        assert_eq!(p.plain_len, plain.len() as u64);
        assert_eq!(file.len() as i64 - plain.len() as i64, p.growth);
        assert!(p.growth <= budget as i64, "{} > {budget}", p.growth);
        // Exact names, in the kept format.
        assert!(p
            .auto
            .iter()
            .all(|r| !r.pattern.contains('*') && r.format == WeightFormat::F16));
        if let Some(q) = &last {
            // A larger budget extends the smaller one's walk: a superset, and J no higher.
            assert!(q.auto.iter().all(|r| p.auto.contains(r)), "{:?}", p.auto);
            let (a, b) = (q.after.objective(&q.before), p.after.objective(&p.before));
            assert!(b <= a, "budget {budget}: J {b} > {a}");
        }
        last = Some(p);
    }
    let p = last.unwrap();
    // The largest budget keeps something and measures better than plain int8.
    assert!(!p.auto.is_empty());
    assert!(p.after.objective(&p.before) < p.before.objective(&p.before));
}

#[test]
fn a_zero_budget_is_the_plain_int8_file() {
    let sd = state_dicts();
    let plain = pack(&sd.0, &sd.1, &options(&[])).unwrap();
    for g in [Growth::Bytes(0), Growth::Percent(0.0)] {
        let p = plan(&sd, g);
        assert!(p.keep.is_empty() && p.auto.is_empty(), "{:?}", p.keep);
        assert_eq!(p.growth, 0);
        assert!(packed(&sd, &p) == plain, "byte-identical");
    }
}

#[test]
fn the_reported_figures_are_those_of_the_written_file() {
    let sd = state_dicts();
    let p = plan(&sd, Growth::Percent(5.0));
    assert!(!p.auto.is_empty());
    let f = AlignedBytes::new(
        &pack(
            &sd.0,
            &sd.1,
            &PackOptions {
                weights: WeightFormat::F32,
                ..options(&[])
            },
        )
        .unwrap(),
    );
    let fm = Model::from_bytes(f.as_bytes()).unwrap();
    for (bytes, figures) in [
        (packed(&sd, &p), &p.after),
        (pack(&sd.0, &sd.1, &options(&[])).unwrap(), &p.before),
    ] {
        let q = AlignedBytes::new(&bytes);
        let qm = Model::from_bytes(q.as_bytes()).unwrap();
        let r = quant_report::report(&fm, &qm, CALIB, &Sequential).unwrap();
        assert_eq!(r.scales.len(), figures.scales.len());
        for (a, b) in r.scales.iter().zip(&figures.scales) {
            assert_eq!(
                (a.tokens, a.top1, a.kl_sum, a.kl_max),
                (b.tokens, b.top1, b.kl_sum, b.kl_max)
            );
        }
        assert_eq!(r.decoder_psnr_db, figures.decoder_psnr_db);
        assert_eq!(r.forced_agreement(), figures.forced_agreement());
    }
}

#[test]
fn user_rules_come_first_and_count_against_the_budget() {
    let sd = state_dicts();
    let auto = AutoPlanOptions {
        max_growth: Growth::Bytes(30_000),
        calib: CALIB,
        ..AutoPlanOptions::default()
    };
    let p = auto_plan(&sd.0, &sd.1, &options(&["head.weight=f32"]), &auto).unwrap();
    assert_eq!(p.keep[0], KeepRule::parse("head.weight=f32").unwrap());
    assert!(p.user_growth > 0 && p.growth >= p.user_growth && p.growth <= 30_000);
    assert!(p.auto.iter().all(|r| r.pattern != "head.weight"));
    let file = pack(
        &sd.0,
        &sd.1,
        &PackOptions {
            keep: p.keep.clone(),
            ..options(&[])
        },
    )
    .unwrap();
    assert_eq!(file.len() as i64 - p.plain_len as i64, p.growth);
    // The user's rule alone over the budget is refused.
    let tight = AutoPlanOptions {
        max_growth: Growth::Bytes(1),
        ..auto
    };
    let e = auto_plan(&sd.0, &sd.1, &options(&["head.weight=f32"]), &tight).unwrap_err();
    assert!(matches!(e, PlanError::KeepOverBudget { .. }), "{e}");
}

#[test]
fn the_parity_helper_plans_the_fixture() {
    let auto = AutoPlanOptions {
        max_growth: Growth::Percent(5.0),
        calib: CALIB,
        ..AutoPlanOptions::default()
    };
    let rules = srdd_tools::parity::auto_plan_fixture(&fixture(), &auto).unwrap();
    assert!(!rules.is_empty());
    let plain = srdd_tools::parity::pack_fixture(&fixture(), WeightFormat::Int8).unwrap();
    assert!(rules.iter().all(|r| !r.pattern.contains('*')));
    // The rules pack and stay within 5 %.
    let sd = state_dicts();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("manifest.json")).unwrap()).unwrap();
    let pn: Vec<u16> = manifest["config"]["patch_nums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u16)
        .collect();
    let file = pack(
        &sd.0,
        &sd.1,
        &PackOptions {
            patch_nums: Some(pn),
            keep: rules,
            ..options(&[])
        },
    )
    .unwrap();
    assert!(file.len() > plain.len());
    assert!((file.len() - plain.len()) as f64 <= plain.len() as f64 * 0.05);
}

#[test]
fn bad_options_are_refused_in_one_line() {
    let sd = state_dicts();
    let refused = |opts: PackOptions, auto: AutoPlanOptions, needle: &str| {
        let e = auto_plan(&sd.0, &sd.1, &opts, &auto).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains(needle) && !msg.contains('\n'), "{msg}");
    };
    let d = AutoPlanOptions {
        calib: CALIB,
        ..AutoPlanOptions::default()
    };
    refused(
        PackOptions {
            weights: WeightFormat::F16,
            ..options(&[])
        },
        d.clone(),
        "needs --weights int8",
    );
    refused(
        options(&[]),
        AutoPlanOptions {
            format: WeightFormat::Int8,
            ..d.clone()
        },
        "f16 or f32",
    );
    refused(options(&[]), AutoPlanOptions { calib: 0, ..d }, "--calib 0");
    for bad in ["ten%", "-5%", "NaN%", "60KB", "1.5", "", "%"] {
        let e = Growth::parse(bad).expect_err(bad);
        assert!(matches!(e, PlanError::Growth(_)), "{bad}: {e}");
    }
    assert_eq!(Growth::parse("10%").unwrap(), Growth::Percent(10.0));
    assert_eq!(Growth::parse("62720").unwrap(), Growth::Bytes(62720));
    assert_eq!(Growth::Percent(10.0).bytes(2_034_432), 203_443);
}

#[test]
fn the_cli_plans_writes_and_inspect_lists_the_kept_weights() {
    let dir = fixture();
    let out = std::env::temp_dir().join(format!("srdd-auto-plan-{}.srdd", std::process::id()));
    let tools = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
            .args(args)
            .output()
            .unwrap()
    };
    let var = dir.join("var.safetensors");
    let vae = dir.join("vae.safetensors");
    let base = [
        "pack",
        "--var",
        var.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--schedule",
        "1,2,3,4,6,8",
        "-o",
        out.to_str().unwrap(),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        tools(&a)
    };
    // Refused before any checkpoint is read, one line each, exit status 2.
    for (extra, needle) in [
        (&["--max-growth", "10%"][..], "needs --weights int8"),
        (
            &["--weights", "int8", "--max-growth", "10 percent"][..],
            "expected a percentage",
        ),
        (
            &["--weights", "int8", "--calib", "4"][..],
            "needs --max-growth",
        ),
        (
            &["--weights", "int8", "--max-growth", "5%", "--calib", "0"][..],
            "--calib 0",
        ),
    ] {
        let o = with(extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    let o = with(&["--weights", "int8", "--max-growth", "5%", "--calib", "4"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("precision plan: budget"), "{stdout}");
    let kept: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("keep "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!kept.is_empty(), "{stdout}");
    let o = tools(&["inspect", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    for name in &kept {
        assert!(
            text.contains(&format!("kept f16: {name} (")),
            "{name}: {text}"
        );
    }
    let o = tools(&["inspect", out.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed: Vec<&str> = v["precision_plan"]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    let mut a = kept.clone();
    a.sort();
    let mut b = listed.clone();
    b.sort();
    assert_eq!(a, b);
    let f16 = &v["precision_plan"]["formats"][1];
    assert_eq!(f16["format"], "f16");
    assert_eq!(f16["weights"].as_u64().unwrap() as usize, kept.len());
    let _ = std::fs::remove_file(&out);
}
