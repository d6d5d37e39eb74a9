#!/usr/bin/env python3
"""Train the emoji32 VQVAE (official VAR VQVAE architecture and key names; multi-scale residual quantizer with Phi).

Loss: MSE reconstruction (+ optional L1) + the official VQ loss (mean over scales of beta*||sg(f_hat)-f||^2 +
||f_hat - sg(f)||^2), straight-through estimator, exactly as VectorQuantizer2.forward. Codebook initialised from
encoder residual vectors; codes unused during the last `restart_every` steps are restarted from residual vectors of
the current batch (first `restart_until_frac` of training). Horizontal flip augmentation.

Writes <out_dir>/vae.pth (plain torch.save of the OrderedDict state_dict, official keys incl. the
quantize.ema_vocab_hit_SV buffer) and logs to tools/train/logs/train_vqvae.log.

Usage: python tools/train/train_vqvae.py [--device cpu|cuda] [--epochs N] [--threads 2]
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_format  # noqa: E402
from common import (TimeBudget, add_io_args, cosine_lr, load_config, optimizer_step, psnr_01,  # noqa: E402
                    save_checked, set_lr, start_run, to_tensor_images, train_arg_parser)
from eval_tokens import build_vae  # noqa: E402


@torch.no_grad()
def evaluate(vae, X, bs=256):
    vae.eval()
    recs, hits = [], 0
    for i in range(0, X.shape[0], bs):
        x = X[i:i + bs]
        f = vae.img_to_f(x)
        idx = vae.quantize.f_to_idxBl(f)
        recs.append(vae.fhat_to_img(vae.quantize.idxBl_to_fhat(idx)))
        hits = hits + torch.stack([torch.bincount(t.flatten(), minlength=vae.V) for t in idx])
    rec = torch.cat(recs)
    p, mse = psnr_01(rec, X)
    used_any = int((hits.sum(0) > 0).sum())
    per_scale = [int((h > 0).sum()) for h in hits]
    vae.train()
    return p, mse, used_any, per_scale, rec


def main():
    ap = train_arg_parser()
    add_io_args(ap, "train_vqvae.log")
    args = ap.parse_args()
    cfg = load_config(args.config)
    tc = cfg["vqvae"]["train"]
    epochs = args.epochs or tc["epochs"]
    bs = args.batch_size or tc["batch_size"]
    dev, log, d = start_run(args, cfg, tc["seed"])
    X = to_tensor_images(d["images"])
    tr = torch.from_numpy(d["split"] == 0)
    Xtr, Xho = X[tr].to(dev), X[~tr].to(dev)
    log(f"vqvae config {cfg['vqvae']} | epochs {epochs} bs {bs} device {args.device} threads {args.threads}")
    log(f"train {Xtr.shape[0]} images, held-out {Xho.shape[0]}")
    vae = build_vae(cfg).to(dev)
    log(f"params: {sum(p.numel() for p in vae.parameters()):,}")
    q = vae.quantize
    # codebook init from encoder residual vectors of a random batch
    with torch.no_grad():
        g = torch.Generator().manual_seed(tc["seed"])
        sel = torch.randperm(Xtr.shape[0], generator=g)[:512].to(dev)
        vae.train()
        q.embedding.weight.data.normal_(0, 0.02)
        _ = vae(Xtr[sel], collect=True)
        pool = q.restart_pool
        pick = torch.randint(0, pool.shape[0], (q.vocab_size,), generator=g).to(dev)
        q.embedding.weight.data.copy_(pool[pick] + 0.01 * torch.randn_like(pool[pick]))
        q.record_hit = 0
        q.ema_vocab_hit_SV.zero_()
    opt = torch.optim.AdamW(vae.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    steps_per_epoch = Xtr.shape[0] // bs
    total = epochs * steps_per_epoch
    window = torch.zeros(q.vocab_size, device=dev)
    step = 0
    budget = TimeBudget(args, log)
    t0 = time.time()
    ep = 0
    while ep < epochs:
        perm = torch.randperm(Xtr.shape[0]).to(dev)
        s_rec = s_vq = 0.0
        n_restart = 0
        for it in range(steps_per_epoch):
            x = Xtr[perm[it * bs:(it + 1) * bs]]
            if tc["hflip"]:
                flip = torch.rand(x.shape[0], device=dev) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            lr = cosine_lr(step, total, tc["lr"], tc["warmup_steps"], tc["lr_min_ratio"])
            set_lr(opt, lr)
            restart_now = (tc["restart_every"] > 0 and (step + 1) % tc["restart_every"] == 0
                           and step < tc["restart_until_frac"] * total)
            rec, vq_loss, hits, f = vae(x, collect=restart_now)
            rec_loss = F.mse_loss(rec, x)
            loss = rec_loss + tc["vq_weight"] * vq_loss
            if tc["l1_weight"] > 0:
                loss = loss + tc["l1_weight"] * F.l1_loss(rec, x)
            optimizer_step(opt, loss, vae.parameters(), tc["grad_clip"])
            window += hits.sum(0)
            if restart_now:
                dead = (window == 0).nonzero().flatten()
                if dead.numel() > 0:
                    pool = q.restart_pool
                    pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=dev)
                    with torch.no_grad():
                        q.embedding.weight.data[dead] = pool[pick] + 0.01 * pool.std() * torch.randn_like(pool[pick])
                        # reset Adam state of restarted rows
                        st = opt.state.get(q.embedding.weight, {})
                        for k in ("exp_avg", "exp_avg_sq"):
                            if k in st:
                                st[k][dead] = 0
                    n_restart += dead.numel()
                window.zero_()
            s_rec += rec_loss.item()
            s_vq += float(vq_loss)
            step += 1
        msg = (f"ep {ep + 1:3d}/{epochs} step {step} lr {lr:.2e} rec_mse {s_rec / steps_per_epoch:.5f} "
               f"vq {s_vq / steps_per_epoch:.5f} restarted {n_restart}")
        if (ep + 1) % max(1, epochs // 12) == 0 or ep == epochs - 1 or ep == 0:
            p, mse, used, per_scale = evaluate(vae, Xho)[:4]
            msg += f" | held-out PSNR {p:.2f} dB, codes used {used}/{q.vocab_size} per scale {per_scale}"
        log(msg + f" ({time.time() - t0:.0f}s)")
        epochs = budget.epochs_after(ep, epochs, t0)
        total = epochs * steps_per_epoch
        ep += 1
    t_train = time.time() - t0
    p_ho, mse_ho, used_ho, ps_ho, _ = evaluate(vae, Xho)
    p_tr, mse_tr, used_tr, ps_tr, _ = evaluate(vae, Xtr)
    log(f"FINAL held-out PSNR {p_ho:.2f} dB (mse {mse_ho:.5f}), codes used {used_ho}/{q.vocab_size} {ps_ho}")
    log(f"FINAL train    PSNR {p_tr:.2f} dB (mse {mse_tr:.5f}), codes used {used_tr}/{q.vocab_size} {ps_tr}")
    log(f"train wall time {t_train:.0f}s ({args.device}, {args.threads} threads)")
    vae = vae.cpu().eval()
    sd = vae.state_dict()
    c = cfg["vqvae"]
    n, order = check_format.check_vae(sd, c["V"], c["Cvae"], c["ch"], c["ch_mult"], c["num_res_blocks"],
                                      c["share_quant_resi"], len(c["patch_nums"]))
    save_checked(sd, n, order, args.out or os.path.join(cfg["out_dir"], "vae.pth"), log, "keys/shapes/dtypes")


if __name__ == "__main__":
    main()
