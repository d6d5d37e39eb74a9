#!/usr/bin/env python3
"""Sample class-conditional images from the trained emoji32 SRDD model with the Markovian loop (each scale run
alone, no KV cache; VAR_SPEC 11.5) using tools/train/models.py, for evaluation with evaluate.py.

Writes --out (.npz: images uint8 (N,32,32,3), labels) and optionally a PNG grid (rows = classes).

Usage: python tools/train/gen_samples.py --n-per-class 40 --cfg 3 --top-k 40 --out /work/scratch/emoji/gen_markov.npz
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_config  # noqa: E402
from eval_tokens import build_vae, build_var  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=None)
    ap.add_argument("--vae", default=None)
    ap.add_argument("--var", default=None)
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=0.0)
    ap.add_argument("--attention", default="markov", choices=["markov", "causal"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", default=None, help="PNG grid path (8 samples per class, 4x upscaled)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    classes = [l.strip() for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "emoji32-classes.txt")) if l.strip()]
    K = len(classes)
    dev = torch.device(args.device)
    vae = build_vae(cfg)
    vae.load_state_dict(torch.load(args.vae or os.path.join(cfg["out_dir"], "vae.pth"), weights_only=True))
    var = build_var(cfg, K)
    var.load_state_dict(torch.load(args.var or os.path.join(cfg["out_dir"], "var.pth"), weights_only=True))
    vae.to(dev).eval()
    var.to(dev).eval()
    labels = torch.arange(K).repeat_interleave(args.n_per_class)
    imgs = []
    for i in range(0, len(labels), 256):
        imgs.append(var.sample_markov(vae, labels[i:i + 256], cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                      seed=args.seed + i, attention=args.attention).cpu())
    img = torch.cat(imgs)
    u8 = img.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, images=u8, labels=labels.numpy(), cfg=args.cfg, top_k=args.top_k,
                        attention=args.attention, class_names=np.array(classes))
    print(f"wrote {args.out}: {len(labels)} images, cfg {args.cfg} top_k {args.top_k} top_p {args.top_p} {args.attention}")
    if args.grid:
        from PIL import Image
        n = min(8, args.n_per_class)
        rows = [np.concatenate([u8[k * args.n_per_class + j] for j in range(n)], axis=1) for k in range(K)]
        g = np.concatenate(rows, axis=0)
        Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(args.grid)
        print(f"wrote {args.grid} (rows: {', '.join(classes)})")


if __name__ == "__main__":
    main()
