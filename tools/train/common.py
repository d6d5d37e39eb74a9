import json
import math
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_config(path=None):
    return json.load(open(path or os.path.join(HERE, "emoji32.json")))


def load_data(npz):
    d = np.load(npz)
    return {k: d[k] for k in d.files}


def to_tensor_images(u8):
    """uint8 (N,32,32,3) -> float32 (N,3,32,32) in [-1,1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255.0).mul(2).sub(1).contiguous()


def cosine_lr(step, total, base, warmup, min_ratio):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Logger:
    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "w")
        self.t0 = time.time()

    def __call__(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def psnr_01(a, b):
    """a, b in [-1,1]; PSNR of the [0,1] images, averaged per image."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) * 0.5).square().flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item(), mse.mean().item()


def default_classifier(cfg):
    """The committed classifier (tools/train/emoji32-classifier.pt), else the training output."""
    committed = os.path.join(HERE, "emoji32-classifier.pt")
    return committed if os.path.exists(committed) else os.path.join(cfg["out_dir"], "classifier.pt")
