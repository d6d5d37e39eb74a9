#!/usr/bin/env python3
"""Small CNN classifier on emoji32 (same 9 labels), used by evaluate.py for class consistency of generated
images and for Frechet distances between its penultimate (128-d) features.

Augmentation: horizontal flip, random shift by up to max_shift pixels (white padding). Class-balanced sampling.
Writes <out_dir>/classifier.pt ({"state_dict", "num_classes", "class_names", "feat_dim"}) and
tools/train/logs/train_classifier.log.

Usage: python tools/train/train_classifier.py [--device cpu|cuda] [--epochs N]
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_io_args, cosine_lr, load_config, optimizer_step, set_lr, start_run,  # noqa: E402
                    to_tensor_images, train_arg_parser)


class EmojiClassifier(nn.Module):
    feat_dim = 128

    def __init__(self, num_classes=9):
        super().__init__()

        def blk(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.f1, self.f2, self.f3 = blk(3, 32), blk(32, 64), blk(64, 128)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(128, num_classes)

    def features(self, x):
        """x in [-1,1], (B,3,32,32) -> (B,128) penultimate features."""
        h = F.max_pool2d(self.f1(x), 2)
        h = F.max_pool2d(self.f2(h), 2)
        h = self.f3(h)
        return h.mean((2, 3))

    def forward(self, x):
        return self.fc(self.drop(self.features(x)))


def load_classifier(path, device="cpu"):
    ck = torch.load(path, map_location=device, weights_only=True)
    m = EmojiClassifier(ck["num_classes"])
    m.load_state_dict(ck["state_dict"])
    return m.to(device).eval(), ck


def augment(x, max_shift):
    B = x.shape[0]
    flip = torch.rand(B, device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if max_shift > 0:
        p = max_shift
        xp = F.pad(x, (p, p, p, p), value=1.0)
        dx, dy = torch.randint(0, 2 * p + 1, (2,)).tolist()
        x = xp[:, :, dy:dy + 32, dx:dx + 32]
    return x


@torch.no_grad()
def accuracy(m, X, y, bs=512):
    m.eval()
    pred = torch.cat([m(X[i:i + bs]).argmax(1) for i in range(0, X.shape[0], bs)])
    return (pred == y).float().mean().item(), pred


def main():
    ap = train_arg_parser(epoch_budget=False)
    add_io_args(ap, "train_classifier.log")
    args = ap.parse_args()
    cfg = load_config(args.config)
    tc = cfg["classifier"]["train"]
    epochs = args.epochs or tc["epochs"]
    dev, log, d = start_run(args, cfg, tc["seed"])
    names = [str(s) for s in d["class_names"]]
    X = to_tensor_images(d["images"]).to(dev)
    y = torch.from_numpy(d["labels"]).to(dev)
    tr = torch.from_numpy(d["split"] == 0).to(dev)
    Xtr, ytr, Xho, yho = X[tr], y[tr], X[~tr], y[~tr]
    K = len(names)
    m = EmojiClassifier(K).to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    counts = torch.bincount(ytr, minlength=K).float()
    w = (1.0 / counts)[ytr] if tc["balanced_sampling"] else torch.ones_like(ytr, dtype=torch.float)
    bs = tc["batch_size"]
    spe = Xtr.shape[0] // bs
    total = epochs * spe
    log(f"classifier: {sum(p.numel() for p in m.parameters()):,} params, classes {names}, epochs {epochs}, device {args.device}")
    t0 = time.time()
    step = 0
    for ep in range(epochs):
        m.train()
        s = 0.0
        for it in range(spe):
            b = torch.multinomial(w, bs, replacement=True)
            set_lr(opt, cosine_lr(step, total, tc["lr"], 50, 0.02))
            loss = F.cross_entropy(m(augment(Xtr[b], tc["max_shift"])), ytr[b], label_smoothing=0.1)
            optimizer_step(opt, loss)
            s += loss.item()
            step += 1
        if (ep + 1) % max(1, epochs // 8) == 0 or ep == epochs - 1:
            acc, _ = accuracy(m, Xho, yho)
            log(f"ep {ep + 1:3d}/{epochs} loss {s / spe:.4f} held-out acc {acc:.3f} ({time.time() - t0:.0f}s)")
    acc, pred = accuracy(m, Xho, yho)
    acc_tr, _ = accuracy(m, Xtr, ytr)
    per = [f"{names[k]} {((pred == k) & (yho == k)).sum().item()}/{(yho == k).sum().item()}" for k in range(K)]
    bal = sum(((pred == k) & (yho == k)).sum().item() / max(1, (yho == k).sum().item()) for k in range(K)) / K
    log(f"FINAL held-out accuracy {acc:.4f} (balanced {bal:.4f}), train accuracy {acc_tr:.4f}; per class: {', '.join(per)}")
    log(f"train wall time {time.time() - t0:.0f}s ({args.device})")
    out = args.out or os.path.join(cfg["out_dir"], "classifier.pt")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save({"state_dict": {k: v.cpu() for k, v in m.state_dict().items()}, "num_classes": K, "class_names": names,
                "feat_dim": EmojiClassifier.feat_dim}, out)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
