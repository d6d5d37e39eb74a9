//! Items of issue #14's "Observed" list that the other CLI tests do not run: `--help` no longer
//! offers `distilled-6` as if every model ran it (and the built-in model's refusal is one line
//! naming its patch sizes), and `--class` and `--attention` both take any case.

use std::path::PathBuf;
use std::process::{Command, Output};

fn srdd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-observed-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn help_says_which_models_run_distilled_6_and_the_refusal_is_one_line() {
    let help = String::from_utf8_lossy(&srdd(&["sample", "--help"]).stdout).into_owned();
    assert!(
        help.contains("only models whose latent is 16×16") && help.contains("srdd info"),
        "{help}"
    );
    let out = tmp("distilled.png");
    let o = srdd(&[
        "sample",
        "--class",
        "1",
        "--schedule",
        "distilled-6",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "srdd: --schedule distilled-6: bad schedule: a patch size is not in the model's \
         schedule (the model's patch sizes: [1, 2, 3, 4, 5, 6, 8])\n"
    );
    assert!(!out.exists());
}

#[test]
fn class_names_and_attention_take_any_case_alike() {
    let (lower, mixed) = (tmp("lower.png"), tmp("mixed.png"));
    for (out, class, attention) in [(&lower, "smileys", "causal"), (&mixed, "Smileys", "Causal")] {
        let o = srdd(&[
            "sample",
            "--class",
            class,
            "--attention",
            attention,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        std::fs::read(&lower).unwrap(),
        std::fs::read(&mixed).unwrap()
    );
}
