#!/usr/bin/env python3
"""Train the emoji32 SRDD (Markovian VAR) transformer on tokens of the frozen trained VQVAE.

Tokens of all train images and their horizontal flips are pre-computed with the VQVAE (held-out images unflipped
for evaluation). Teacher-forcing inputs are the official idxBl_to_var_input (Phi, bicubic up, area down; VAR_SPEC
3.5); forward is the official VAR.forward (label -> null class with probability cond_drop_rate, SOS = class_emb +
pos_start, + lvl_embed + pos_1LC) with the MARKOVIAN block-diagonal attention mask (VAR_SPEC 11.4); loss = mean
token cross-entropy over all L tokens (5.8). AdamW (no weight decay on biases, 1-D params, pos/lvl embeddings and
scale_mul, as the official filter), linear warmup, cosine decay, grad clipping.

Writes <out_dir>/var.pth (plain torch.save of the official-format OrderedDict state_dict; the stored
attn_bias_for_masking buffer is the official block-causal one) and logs to tools/train/logs/train_var.log.

Usage: python tools/train/train_var.py [--device cpu|cuda] [--epochs N] [--vae /work/scratch/emoji/vae.pth]
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_format  # noqa: E402
from common import (TimeBudget, add_io_args, cosine_lr, load_config, optimizer_step, save_checked,  # noqa: E402
                    set_lr, start_run, to_tensor_images, train_arg_parser)
from eval_tokens import build_vae, build_var, token_ce, tokenize, var_inputs  # noqa: E402

NOWD = ("pos_1LC", "pos_start", "lvl_embed", "scale_mul", "ada_gss")


def main():
    ap = train_arg_parser()
    ap.add_argument("--drop-path", type=float, default=None, help="override var.drop_path_rate")
    ap.add_argument("--weight-decay", type=float, default=None, help="override var.train.weight_decay")
    ap.add_argument("--lr", type=float, default=None, help="override var.train.lr")
    ap.add_argument("--keep-best", action="store_true", help="keep the evaluated epoch with the lowest held-out CE")
    add_io_args(ap, "train_var.log", inputs=("vae",))
    args = ap.parse_args()
    cfg = load_config(args.config)
    tc = cfg["var"]["train"]
    if args.drop_path is not None:
        cfg["var"]["drop_path_rate"] = args.drop_path
    if args.weight_decay is not None:
        tc["weight_decay"] = args.weight_decay
    if args.lr is not None:
        tc["lr"] = args.lr
    if tc.get("keep_best"):
        args.keep_best = True
    epochs = args.epochs or tc["epochs"]
    bs = args.batch_size or tc["batch_size"]
    dev, log, d = start_run(args, cfg, tc["seed"])
    pn = tuple(cfg["vqvae"]["patch_nums"])
    num_classes = len(d["class_names"])
    log(f"var config {cfg['var']} | num_classes {num_classes} ({list(d['class_names'])}) | epochs {epochs} bs {bs} "
        f"device {args.device}")
    vae = build_vae(cfg)
    vae_path = args.vae or os.path.join(cfg["out_dir"], "vae.pth")
    vae.load_state_dict(torch.load(vae_path, weights_only=True))
    vae.to(dev).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    X = to_tensor_images(d["images"]).to(dev)
    y = torch.from_numpy(d["labels"]).to(dev)
    tr = torch.from_numpy(d["split"] == 0).to(dev)
    t0 = time.time()
    Xtr = X[tr]
    if tc["hflip_tokens"]:
        Xtr = torch.cat([Xtr, Xtr.flip(3)])
        ytr = torch.cat([y[tr], y[tr]])
    else:
        ytr = y[tr]
    tok_tr = tokenize(vae, Xtr)
    tok_ho = tokenize(vae, X[~tr])
    y_ho = y[~tr]
    vin_tr = var_inputs(vae, tok_tr, pn)
    vin_ho = var_inputs(vae, tok_ho, pn)
    log(f"tokenized {tok_tr.shape[0]} train sequences (incl. flips) and {tok_ho.shape[0]} held-out in {time.time() - t0:.1f}s; "
        f"L={tok_tr.shape[1]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out or os.path.join(cfg["out_dir"], "var.pth"))), exist_ok=True)
    torch.save({"tok_tr": tok_tr.cpu(), "y_tr": ytr.cpu(), "tok_ho": tok_ho.cpu(), "y_ho": y_ho.cpu()},
               os.path.join(os.path.dirname(args.out or os.path.join(cfg["out_dir"], "var.pth")), "tokens.pt"))

    var = build_var(cfg, num_classes).to(dev)
    n_par = sum(p.numel() for p in var.parameters())
    log(f"VAR params {n_par:,}")
    decay, no_decay = [], []
    for n, p in var.named_parameters():
        (no_decay if (p.ndim < 2 or any(k in n for k in NOWD)) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc["lr"], betas=tuple(tc["betas"]))
    mask = var.attn_mask(cfg["var"]["attention_train"]).to(dev)
    N = tok_tr.shape[0]
    steps_per_epoch = N // bs
    total = epochs * steps_per_epoch
    step = 0
    budget = TimeBudget(args, log)
    t0 = time.time()
    best = (1e9, None, None)
    ep = 0
    while ep < epochs:
        var.train()
        perm = torch.randperm(N, device=dev)
        s = 0.0
        for it in range(steps_per_epoch):
            b = perm[it * bs:(it + 1) * bs]
            lr = cosine_lr(step, total, tc["lr"], tc["warmup_steps"], tc["lr_min_ratio"])
            set_lr(opt, lr)
            logits = var(ytr[b], vin_tr[b], mask)
            loss = F.cross_entropy(logits.reshape(-1, var.V), tok_tr[b].reshape(-1),
                                   label_smoothing=tc.get("label_smoothing", 0.0))
            optimizer_step(opt, loss, var.parameters(), tc["grad_clip"])
            s += loss.item()
            step += 1
        msg = f"ep {ep + 1:4d}/{epochs} step {step} lr {lr:.2e} train CE {s / steps_per_epoch:.4f}"
        if (ep + 1) % max(1, epochs // 15) == 0 or ep == epochs - 1 or ep == 0:
            ce, per, acc = token_ce(var, vin_ho, tok_ho, y_ho, "markov")
            msg += f" | held-out CE {ce:.4f} acc {acc:.3f} per scale {[round(v, 3) for v in per]}"
            if args.keep_best and ce < best[0]:
                best = (ce, ep + 1, {k: v.detach().clone() for k, v in var.state_dict().items()})
        log(msg + f" ({time.time() - t0:.0f}s)")
        epochs = budget.epochs_after(ep, epochs, t0)
        total = epochs * steps_per_epoch
        ep += 1
    t_train = time.time() - t0
    if args.keep_best and best[2] is not None:
        var.load_state_dict(best[2])
        log(f"keeping the checkpoint of epoch {best[1]} (best held-out markov CE {best[0]:.4f} among the evaluated epochs)")
    for att in ("markov", "causal"):
        ce, per, acc = token_ce(var, vin_ho, tok_ho, y_ho, att)
        log(f"FINAL held-out CE [{att}] {ce:.4f} (ppl {math.exp(ce):.1f}) acc {acc:.3f} per scale {[round(v, 4) for v in per]}")
    sub = torch.randperm(N, device=dev)[:1024]
    ce, per, acc = token_ce(var, vin_tr[sub], tok_tr[sub], ytr[sub], "markov")
    log(f"FINAL train (1024 seq) CE [markov] {ce:.4f} acc {acc:.3f} per scale {[round(v, 4) for v in per]}")
    log(f"train wall time {t_train:.0f}s ({args.device}, {args.threads} threads)")
    var = var.cpu().eval()
    sd = var.state_dict()
    c = cfg["var"]
    n, order = check_format.check_var(sd, c["depth"], c["embed_dim"], c["num_heads"], cfg["vqvae"]["V"],
                                      cfg["vqvae"]["Cvae"], num_classes, pn)
    save_checked(sd, n, order, args.out or os.path.join(cfg["out_dir"], "var.pth"), log, "keys/shapes/dtypes/buffers")


if __name__ == "__main__":
    main()
