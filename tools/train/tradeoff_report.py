#!/usr/bin/env python3
"""Joins the engine's sampling sweep (host/examples/tradeoff.rs: OUT/summary.json and one PNG
directory per configuration) with the emoji32 classifier's scores, and writes the trade-off table
(markdown) and plots (PNG) for docs/SAMPLING.md.

    cargo run --release -p srdd --example tradeoff -- --out /tmp/sweep --per-class 20 \
        --inpaint /tmp/heldout
    /work/venv-torch/bin/python tools/train/tradeoff_report.py /tmp/sweep --md docs/sampling-tradeoff.md \
        --plot docs/img/tradeoff.png

Also: `--export-heldout DIR` writes the held-out images as `<label>_<index>.png` (inpainting input).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_classifier, load_config, load_data  # noqa: E402
from evaluate import feats_and_pred, frechet, load_generated  # noqa: E402
from train_classifier import load_classifier  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", nargs="?")
    ap.add_argument("--md", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--npz", default=None)
    ap.add_argument("--export-heldout", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config()
    d = load_data(a.npz or cfg["data"]["npz"])
    ho = d["split"] == 1
    if a.export_heldout:
        from PIL import Image
        os.makedirs(a.export_heldout, exist_ok=True)
        for i in np.flatnonzero(ho):
            Image.fromarray(d["images"][i]).save(os.path.join(a.export_heldout, f"{d['labels'][i]}_{i:05d}.png"))
        print(f"wrote {int(ho.sum())} held-out images to {a.export_heldout}")
        if not a.sweep:
            return
    m, ck = load_classifier(a.classifier or default_classifier(cfg))
    names = ck["class_names"]
    f_ho, p_ho = feats_and_pred(m, d["images"][ho])
    acc_real = float(np.mean(p_ho == d["labels"][ho]))
    summary = json.load(open(os.path.join(a.sweep, "summary.json")))
    rows = []
    for c in summary["configs"]:
        gi, gl = load_generated(os.path.join(a.sweep, c["name"]), names)
        f_g, p_g = feats_and_pred(m, gi)
        rows.append(dict(c, acc=float(np.mean(p_g == gl)), fd=frechet(f_g, f_ho), n=len(gl)))
    full = next(r for r in rows if r["name"] == "full")
    lines = [
        f"Classifier accuracy on held-out real images: {acc_real:.3f}. Generated: {rows[0]['n']} images per configuration.",
        "",
        "| configuration | steps | tokens | refine | policy | MACs (M) | vs full | median ms/image | class consistency | feature distance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        macs = (r["macs_transformer"] + r["macs_decoder"]) / 1e6
        rel = (r["macs_transformer"] + r["macs_decoder"]) / (full["macs_transformer"] + full["macs_decoder"])
        lines.append(
            f"| {r['name']} | {len(r['schedule'])} | {r['tokens']} | {r['refine']} | {r['policy']} | {macs:.1f} | "
            f"{rel:.2f}x | {r['median_ms']:.1f} | {r['acc']:.3f} | {r['fd']:.2f} |")
    if summary.get("inpaint"):
        lines += ["", "| inpainting (centre box, full schedule) | mean PSNR of the generated region (dB) | images |",
                  "|---|---|---|"]
        for r in summary["inpaint"]:
            lines.append(f"| {r['attention']} | {r['mean_psnr_generated']:.2f} | {r['images']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.md:
        open(a.md, "w").write(text)
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        for r in rows:
            x = (r["macs_transformer"] + r["macs_decoder"]) / 1e6
            mk = "o" if r["refine"] == 0 else ("s" if r["policy"] == "fraction" else "^")
            ax[0].scatter(x, r["acc"], marker=mk)
            ax[0].annotate(r["name"], (x, r["acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax[1].scatter(x, r["fd"], marker=mk)
            ax[1].annotate(r["name"], (x, r["fd"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax[0].set_xlabel("MACs per image (M)")
        ax[0].set_ylabel("class consistency (classifier accuracy)")
        ax[1].set_xlabel("MACs per image (M)")
        ax[1].set_ylabel("feature distance to held-out (lower is better)")
        ax[0].set_title("o: no refinement, s: fraction 0.25, ^: learned")
        fig.tight_layout()
        os.makedirs(os.path.dirname(a.plot) or ".", exist_ok=True)
        fig.savefig(a.plot, dpi=110)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
