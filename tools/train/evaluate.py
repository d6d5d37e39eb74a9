#!/usr/bin/env python3
"""Evaluate generated 32x32 emoji images with the emoji32 classifier.

Generated images: either a .npz with `images` uint8 (N,32,32,3) and `labels` int (N,) (intended class), or a
directory of PNGs named `<label>_<anything>.png` where <label> is a class index or a class slug
(tools/train/emoji32-classes.txt). Reports
  (a) classifier accuracy on the generated images w.r.t. their intended labels (overall and per class),
  (b) Frechet distance between classifier penultimate features (128-d) of the generated set and of the held-out
      real set (and, as a yardstick, train-real vs held-out-real with the same N),
  and the classifier's accuracy on the held-out real images.

Usage: python tools/train/evaluate.py GEN(.npz|dir) [--classifier /work/scratch/emoji/classifier.pt]
       [--npz /work/scratch/emoji/emoji32.npz]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_classifier, load_config, load_data, to_tensor_images  # noqa: E402
from train_classifier import load_classifier  # noqa: E402


def load_generated(path, class_names):
    if os.path.isdir(path):
        from PIL import Image
        imgs, labs = [], []
        for fn in sorted(os.listdir(path)):
            if not fn.lower().endswith(".png"):
                continue
            lab = fn.split("_")[0]
            lab = int(lab) if lab.isdigit() else class_names.index(lab)
            im = Image.open(os.path.join(path, fn)).convert("RGBA")
            a = np.asarray(im).astype(np.float64) / 255.0
            rgb = a[..., :3] * a[..., 3:4] + (1 - a[..., 3:4])
            if rgb.shape[:2] != (32, 32):
                raise SystemExit(f"{fn}: expected 32x32, got {rgb.shape[:2]}")
            imgs.append(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8))
            labs.append(lab)
        return np.stack(imgs), np.array(labs, dtype=np.int64)
    d = np.load(path)
    return d["images"], d["labels"].astype(np.int64)


@torch.no_grad()
def feats_and_pred(m, u8, bs=512):
    X = to_tensor_images(u8)
    fs, ps = [], []
    for i in range(0, X.shape[0], bs):
        f = m.features(X[i:i + bs])
        fs.append(f)
        ps.append(m.fc(f).argmax(1))
    return torch.cat(fs).double().numpy(), torch.cat(ps).numpy()


def frechet(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    # tr(sqrtm(s1 s2)) = sum sqrt(eig(s1 s2)); eigenvalues are real and >= 0 up to rounding
    ev = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(ev.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gen")
    ap.add_argument("--config", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--npz", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    m, ck = load_classifier(args.classifier or default_classifier(cfg))
    names = ck["class_names"]
    d = load_data(args.npz or cfg["data"]["npz"])
    ho = d["split"] == 1
    f_ho, p_ho = feats_and_pred(m, d["images"][ho])
    y_ho = d["labels"][ho]
    print(f"classifier accuracy on held-out real images: {np.mean(p_ho == y_ho):.4f} ({len(y_ho)} images)")
    gi, gl = load_generated(args.gen, names)
    f_g, p_g = feats_and_pred(m, gi)
    print(f"generated: {len(gl)} images from {args.gen}")
    print(f"(a) classifier accuracy on generated images (intended label): {np.mean(p_g == gl):.4f}")
    for k, n in enumerate(names):
        sel = gl == k
        if sel.any():
            print(f"      {k} {n:10s} {int((p_g[sel] == k).sum()):4d}/{int(sel.sum()):4d} = {np.mean(p_g[sel] == k):.3f}")
    fd = frechet(f_g, f_ho)
    rng = np.random.default_rng(args.seed)
    tr_idx = np.flatnonzero(d["split"] == 0)
    n = min(len(gl), len(tr_idx))
    f_tr, _ = feats_and_pred(m, d["images"][rng.choice(tr_idx, n, replace=False)])
    fd_ref = frechet(f_tr, f_ho)
    print(f"(b) Frechet distance (classifier penultimate features, 128-d) generated vs held-out real: {fd:.3f}")
    print(f"    yardstick: {n} random train-real images vs held-out real: {fd_ref:.3f}")


if __name__ == "__main__":
    main()
