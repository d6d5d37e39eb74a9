#!/usr/bin/env python3
"""Sample the trained emoji32 model with tools/scripts/official_reference.py (the independent re-implementation of
the official inference code; Markovian loop by default) and write 32x32 PNGs named `<class-slug>_s<seed>.png`
(the directory format evaluate.py reads) plus a 4x-upscaled grid (rows = classes).

Usage: python tools/train/ref_samples.py --out-dir /work/scratch/emoji/ref_samples/png [--n 20] [--cfg 3] [--top-k 40]
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import official_reference as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--var", default="/work/scratch/emoji/var.pth")
    ap.add_argument("--vae", default="/work/scratch/emoji/vae.pth")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--n", type=int, default=20, help="samples per class (seeds 0..n-1)")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=0.0)
    ap.add_argument("--attention", default="markov", choices=["markov", "causal"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    classes = [l.strip() for l in open(os.path.join(HERE, "emoji32-classes.txt")) if l.strip()]
    var = ref.VARRef(ref.load_state_dict(args.var))
    vae = ref.VQVAERef(ref.load_state_dict(args.vae), var.patch_nums)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for k, name in enumerate(classes):
        row = []
        for s in range(args.n):
            out, _ = ref.sample(var, vae, k, cfg=args.cfg, seed=s, attention=args.attention, top_k=args.top_k,
                                top_p=args.top_p)
            u8 = out["image"][0].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(u8).save(os.path.join(args.out_dir, f"{name}_s{s}.png"))
            row.append(u8)
        rows.append(np.concatenate(row[:10], axis=1))
    g = np.concatenate(rows, axis=0)
    grid = os.path.join(os.path.dirname(os.path.abspath(args.out_dir)),
                        f"grid_ref_{args.attention}_cfg{args.cfg:g}_k{args.top_k}.png")
    Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(grid)
    print(f"wrote {len(classes) * args.n} PNGs to {args.out_dir} and {grid}")


if __name__ == "__main__":
    main()
