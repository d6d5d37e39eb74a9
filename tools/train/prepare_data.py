#!/usr/bin/env python3
"""Build the emoji32 data set: 32x32 RGB Google emoji with category labels.

Downloads the npm package emoji-datasource-google (pinned version, via `npm pack`) into --work-dir, reads
emoji.json and img/google/64/*.png, keeps emojis with has_img_google (category != "Component"), composites
alpha over WHITE, downsamples 64->32 by 2x2 area averaging (float, then round), and writes
<work-dir>/emoji32.npz:

  images   uint8 (N, 32, 32, 3)
  labels   int64 (N,)   class index in CLASS_SLUGS order
  split    uint8 (N,)   0 = train, 1 = held-out
  base     unicode (N,) unified code of the base emoji (skin-tone variants share their base's code)
  unified  unicode (N,) unified code of this image
  is_variant uint8 (N,) 1 for single-skin-tone variants (multi-tone combinations are skipped)
  class_names unicode (K,)  slugs;  class_categories unicode (K,) emoji.json category names

Held-out split: sha1(base unified code) % 10 == 0 -> held-out (about 10%); all skin-tone variants of a base go
to the same side, so held-out never shares a base emoji with train.

Usage: python tools/train/prepare_data.py [--work-dir /work/scratch/emoji] [--version 16.0.0]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

CLASSES = [  # (slug, emoji.json category), in class-index order
    ("smileys", "Smileys & Emotion"),
    ("people", "People & Body"),
    ("animals", "Animals & Nature"),
    ("food", "Food & Drink"),
    ("travel", "Travel & Places"),
    ("activities", "Activities"),
    ("objects", "Objects"),
    ("symbols", "Symbols"),
    ("flags", "Flags"),
]


def load_png32(path):
    im = Image.open(path).convert("RGBA")
    assert im.size == (64, 64), (path, im.size)
    a = np.asarray(im).astype(np.float64) / 255.0
    rgb, alpha = a[..., :3], a[..., 3:4]
    comp = rgb * alpha + 1.0 * (1.0 - alpha)           # over white
    small = comp.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))  # 2x2 area average
    return np.clip(np.round(small * 255.0), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default="/work/scratch/emoji")
    ap.add_argument("--version", default="16.0.0")
    ap.add_argument("--no-variants", action="store_true", help="skip skin-tone variants")
    ap.add_argument("--classes-out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "emoji32-classes.txt"))
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    tgz = os.path.join(args.work_dir, f"emoji-datasource-google-{args.version}.tgz")
    if not os.path.exists(tgz):
        subprocess.run(["npm", "pack", f"emoji-datasource-google@{args.version}"], cwd=args.work_dir, check=True)
    pkg = os.path.join(args.work_dir, "pkg")
    if not os.path.exists(os.path.join(pkg, "package", "emoji.json")):
        with tarfile.open(tgz) as t:
            t.extractall(pkg)
    root = os.path.join(pkg, "package")
    meta = json.load(open(os.path.join(root, "package.json")))
    assert meta["version"] == args.version, meta["version"]
    data = json.load(open(os.path.join(root, "emoji.json")))
    cat2idx = {c: i for i, (_, c) in enumerate(CLASSES)}
    imgdir = os.path.join(root, "img", "google", "64")

    rows = []  # (unified, base, label, image file, is_variant)
    for e in sorted(data, key=lambda e: e["sort_order"]):
        if not e.get("has_img_google") or e["category"] not in cat2idx:
            continue
        lab = cat2idx[e["category"]]
        rows.append((e["unified"], e["unified"], lab, e["image"], 0))
        if args.no_variants:
            continue
        for key, v in sorted((e.get("skin_variations") or {}).items()):
            if "-" in key or not v.get("has_img_google"):  # single-tone variants only
                continue
            rows.append((v["unified"], e["unified"], lab, v["image"], 1))

    images, labels, split, base, unified, var = [], [], [], [], [], []
    missing = 0
    for u, b, lab, fn, isv in rows:
        p = os.path.join(imgdir, fn)
        if not os.path.exists(p):
            missing += 1
            continue
        images.append(load_png32(p))
        labels.append(lab)
        h = int(hashlib.sha1(b.encode("ascii")).hexdigest(), 16)
        split.append(1 if h % 10 == 0 else 0)
        base.append(b)
        unified.append(u)
        var.append(isv)
    images = np.stack(images)
    labels = np.array(labels, dtype=np.int64)
    split = np.array(split, dtype=np.uint8)
    out = os.path.join(args.work_dir, "emoji32.npz")
    np.savez_compressed(out, images=images, labels=labels, split=split, base=np.array(base), unified=np.array(unified),
                        is_variant=np.array(var, dtype=np.uint8),
                        class_names=np.array([s for s, _ in CLASSES]), class_categories=np.array([c for _, c in CLASSES]),
                        version=np.array(args.version))
    with open(args.classes_out, "w") as f:
        f.write("".join(s + "\n" for s, _ in CLASSES))
    tr_b = set(b for b, s in zip(base, split) if s == 0)
    ho_b = set(b for b, s in zip(base, split) if s == 1)
    assert not (tr_b & ho_b)
    print(f"emoji-datasource-google {args.version}: {len(images)} images ({int(np.sum(var))} skin-tone variants), "
          f"missing png {missing}; train {int((split == 0).sum())}, held-out {int((split == 1).sum())}; "
          f"bases train {len(tr_b)}, held-out {len(ho_b)}")
    for i, (s, c) in enumerate(CLASSES):
        m = labels == i
        print(f"  {i} {s:10s} {c:18s} train {int((m & (split == 0)).sum()):5d} (bases {int((m & (split == 0) & (np.array(var) == 0)).sum()):4d})"
              f"  held-out {int((m & (split == 1)).sum()):4d} (bases {int((m & (split == 1) & (np.array(var) == 0)).sum()):3d})")
    print(f"wrote {out} and {args.classes_out}")


if __name__ == "__main__":
    sys.exit(main())
