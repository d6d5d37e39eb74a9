#!/usr/bin/env python3
"""Writes golden.json: PyTorch features (128-d) and logits of the committed emoji32 classifier
(tools/train/emoji32-classifier.pt) on three 32x32 tiles of tools/tests/data/classifier/grid.png (tile (row, col)
at x = 34*col, y = 34*row; the grid has 2-pixel gaps), preprocessed as evaluate.py does. Checked by
tools/tests/classifier.rs without torch. Also evaluate.py's Frechet distance between the features of the
grid's columns 0-3 and columns 4-7 (36 tiles each, every row).

Usage: /work/venv-torch/bin/python tools/tests/data/classifier/make_golden.py
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../.."))
sys.path.insert(0, os.path.join(ROOT, "tools/train"))
from common import to_tensor_images  # noqa: E402
from evaluate import frechet  # noqa: E402
from train_classifier import load_classifier  # noqa: E402

TILES = [(0, 0), (1, 0), (8, 1)]


def read_png_rgb8(path):
    """8-bit RGB, non-interlaced PNG (what class_grid.py writes), without PIL."""
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat = 8, b""
    while i < len(b):
        n, t = struct.unpack(">I4s", b[i:i + 8])
        d = b[i + 8:i + 8 + n]
        if t == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", d)
            assert (depth, ctype, interlace) == (8, 2, 0), "expected 8-bit RGB, non-interlaced"
        elif t == b"IDAT":
            idat += d
        i += 12 + n
    raw = zlib.decompress(idat)
    bpp, stride = 3, w * 3
    out = np.zeros((h, stride), np.int64)
    prev = np.zeros(stride, np.int64)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)], np.uint8).astype(np.int64)
        cur = np.zeros(stride, np.int64)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            c = prev[x - bpp] if x >= bpp else 0
            up = prev[x]
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = up
            elif f == 3:
                p = (a + up) // 2
            else:
                pa, pb, pc = abs(up - c), abs(a - c), abs(a + up - 2 * c)
                p = a if pa <= pb and pa <= pc else (up if pb <= pc else c)
            cur[x] = (line[x] + p) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, 3).astype(np.uint8)


def main():
    grid = read_png_rgb8(os.path.join(ROOT, "tools/tests/data/classifier/grid.png"))
    imgs = np.stack([grid[34 * r:34 * r + 32, 34 * c:34 * c + 32] for r, c in TILES])
    m, _ = load_classifier(os.path.join(ROOT, "tools/train/emoji32-classifier.pt"))
    with torch.no_grad():
        f = m.features(to_tensor_images(imgs))
        lg = m.fc(f)
    cases = [{"tile": list(t), "rgb_sum": int(im.astype(np.int64).sum()),
              "features": [float(v) for v in f[i]], "logits": [float(v) for v in lg[i]]}
             for i, (t, im) in enumerate(zip(TILES, imgs))]
    with torch.no_grad():
        half = [m.features(to_tensor_images(np.stack([grid[34 * r:34 * r + 32, 34 * c:34 * c + 32]
                                                      for r in range(9) for c in cols]))).double().numpy()
                for cols in (range(0, 4), range(4, 8))]
    fd = frechet(half[0], half[1])
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")
    with open(out, "w") as fh:
        json.dump({"source": "tools/tests/data/classifier/grid.png", "torch": torch.__version__, "cases": cases,
                   "frechet_columns_0_3_vs_4_7": fd}, fh)
        fh.write("\n")
    print(f"wrote {out}: {len(cases)} cases, argmax {[int(v) for v in lg.argmax(1)]}, Frechet {fd}")


if __name__ == "__main__":
    main()
