#!/usr/bin/env python3
"""Trains the learned resampling policy of `srdd ... --resample learned` (issue #5).

The policy is a logistic scorer over three per-token features the engine has at sampling time:
the drawn token's probability (confidence), the distribution's entropy (nats) and the step's
position k / (steps - 1). Its target: "this drawn token disagrees with the data". Training data
come from teacher forcing on the training images: with the ground-truth input of every scale
(Markovian attention, CFG mixed with the official linear ramp at --cfg, as at sampling time), a
token is drawn from each position's distribution; label = drawn != ground-truth token. The first
scale is skipped (the engine never refines it).

Most drawn tokens disagree with the single data token (the residual codes are multi-modal), so
"probability of being wrong above 1/2" would select nearly everything. The fitted scorer is used as a
ranking instead: its bias is shifted so that a score > 0 selects the --budget fraction (default 25 %)
of training tokens most likely to be wrong. A refinement pass then draws again every token whose score
w . features + b > 0. The four numbers are printed and written to --out, to be
stored in the model with `srdd-tools pack --resample-policy w_conf,w_ent,w_step,b`.

    /work/venv-torch/bin/python tools/train/train_policy.py --vae V.pth --var VAR.pth \
        --npz /work/scratch/emoji/emoji32.npz --out tools/train/logs/resample_policy.txt
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Logger, load_config, load_data, to_tensor_images  # noqa: E402
from models import VAR, VQVAE  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", required=True)
    ap.add_argument("--var", required=True)
    ap.add_argument("--npz", default="/work/scratch/emoji/emoji32.npz")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--max-images", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "logs", "resample_policy.txt"))
    ap.add_argument("--log", default=os.path.join(os.path.dirname(__file__), "logs", "train_policy.log"))
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    log = Logger(a.log)
    cfg = load_config()
    vq, vc = cfg["vqvae"], cfg["var"]
    vae = VQVAE(vocab_size=vq["V"], z_channels=vq["Cvae"], ch=vq["ch"], ch_mult=tuple(vq["ch_mult"]),
                num_res_blocks=vq["num_res_blocks"], v_patch_nums=tuple(vq["patch_nums"]))
    vae.load_state_dict(torch.load(a.vae, map_location="cpu", weights_only=True))
    d = load_data(a.npz)
    names = [n for n in open(os.path.join(os.path.dirname(__file__), "emoji32-classes.txt")).read().split()]
    var = VAR(vocab_size=vq["V"], Cvae=vq["Cvae"], num_classes=len(names), depth=vc["depth"],
              embed_dim=vc["embed_dim"], num_heads=vc["num_heads"], mlp_ratio=vc["mlp_ratio"],
              patch_nums=tuple(vq["patch_nums"]))
    var.load_state_dict(torch.load(a.var, map_location="cpu", weights_only=True))
    vae.eval()
    var.eval()
    train = d["split"] == 0 if "split" in d else None
    imgs = d["images"][train] if train is not None else d["images"]
    labels = d["labels"][train] if train is not None else d["labels"]
    g = torch.Generator().manual_seed(a.seed)
    sel = torch.randperm(len(imgs), generator=g)[: a.max_images]
    x = to_tensor_images(imgs[sel.numpy()])
    y = torch.from_numpy(labels[sel.numpy()]).long()
    pns = var.patch_nums
    steps = len(pns)
    mask = var.attn_mask("markov")
    feats, targets = [], []
    with torch.no_grad():
        for i in range(0, len(x), 128):
            xb, yb = x[i:i + 128], y[i:i + 128]
            idx = vae.img_to_idxBl(xb)
            inp = vae.quantize.idxBl_to_var_input(idx)
            cond = var(yb, inp, mask, cond_drop=0.0)
            unc = var(torch.full_like(yb, var.num_classes), inp, mask, cond_drop=0.0)
            for k, (b0, b1) in enumerate(var.begin_ends):
                if k == 0:
                    continue
                t = a.cfg * k / (steps - 1)
                logits = (1 + t) * cond[:, b0:b1] - t * unc[:, b0:b1]
                p = logits.softmax(-1)
                drawn = torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=g).view(p.shape[:2])
                conf = p.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
                ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
                step = torch.full_like(conf, k / (steps - 1))
                feats.append(torch.stack([conf, ent, step], -1).reshape(-1, 3))
                targets.append((drawn != idx[k]).float().reshape(-1))
    X = torch.cat(feats)
    Y = torch.cat(targets)
    log(f"{len(X)} drawn tokens from {len(x)} training images; {Y.mean().item():.3f} disagree with the data")
    w = torch.zeros(3, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(X @ w + b, Y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        s = X @ w + b
        pred = s > 0
        acc = (pred == (Y > 0.5)).float().mean().item()
        loss = F.binary_cross_entropy_with_logits(s, Y).item()
        base = max(Y.mean().item(), 1 - Y.mean().item())
        log(f"logistic fit: loss {loss:.4f}, accuracy {acc:.4f} (majority baseline {base:.4f}), "
            f"selects {pred.float().mean().item():.3f} of tokens; precision "
            f"{(Y[pred].mean().item() if pred.any() else float('nan')):.3f}")
        for k in range(1, steps):
            m = X[:, 2] == k / (steps - 1)
            log(f"  step {k} (pn {pns[k]}): wrong {Y[m].mean().item():.3f}, selected {pred[m].float().mean().item():.3f}")
        # Shift the bias: score > 0 selects the `budget` fraction most likely to be wrong.
        q = torch.quantile(s[torch.randperm(len(s), generator=g)[:200000]], 1 - a.budget).item()
        bias = b.item() - q
        s2 = X @ w + bias
        sel = s2 > 0
        log(f"ranking with a {a.budget:.0%} budget: bias {bias:.4f}; selects {sel.float().mean().item():.3f}; "
            f"precision {Y[sel].mean().item():.3f} vs base rate {Y.mean().item():.3f}; "
            f"of the unselected {Y[~sel].mean().item():.3f} are wrong")
        for k in range(1, steps):
            m = X[:, 2] == k / (steps - 1)
            log(f"  step {k} (pn {pns[k]}): selected {sel[m].float().mean().item():.3f}, "
                f"precision {Y[m & sel].mean().item() if (m & sel).any() else float('nan'):.3f}")
    line = ",".join(f"{v:.6g}" for v in [*w.tolist(), bias])
    log(f"policy (w_confidence, w_entropy, w_step, bias) = {line}")
    with open(a.out, "w") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
