#!/usr/bin/env python3
"""One row per class from a directory of `<label>_<seed>.png` samples (as written by
host/examples/tradeoff.rs), with the class names on the left; for the README / docs.

    /work/venv-torch/bin/python tools/train/class_grid.py DIR docs/img/emoji32-grid.png [--per-class 10] [--scale 2]
"""
import argparse
import os

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--scale", type=int, default=2)
    a = ap.parse_args()
    names = open(os.path.join(HERE, "emoji32-classes.txt")).read().split()
    files = {}
    for fn in os.listdir(a.dir):
        if fn.endswith(".png"):
            lab, seed = fn[:-4].split("_", 1)
            files.setdefault(int(lab), []).append((int(seed) if seed.isdigit() else seed, fn))
    s, gap, left = 32 * a.scale, 2, 80
    rows = sorted(files)
    out = Image.new("RGB", (left + a.per_class * (s + gap), len(rows) * (s + gap)), "white")
    d = ImageDraw.Draw(out)
    for r, lab in enumerate(rows):
        y = r * (s + gap)
        d.text((4, y + s // 2 - 6), names[lab] if lab < len(names) else str(lab), fill="black")
        for c, (_, fn) in enumerate(sorted(files[lab])[: a.per_class]):
            im = Image.open(os.path.join(a.dir, fn)).convert("RGB").resize((s, s), Image.NEAREST)
            out.paste(im, (left + c * (s + gap), y))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    out.save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
