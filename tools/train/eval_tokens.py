#!/usr/bin/env python3
"""Held-out metrics of a trained emoji32 VQVAE + VAR pair: VQVAE reconstruction PSNR and codebook usage, and the
teacher-forced token cross-entropy per scale (Markovian = block-diagonal mask, and block-causal for comparison),
with the true class label and with the null class.

Usage: python tools/train/eval_tokens.py [--vae /work/scratch/emoji/vae.pth] [--var /work/scratch/emoji/var.pth]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
from common import HERE, Logger, load_config, load_data, psnr_01, to_tensor_images  # noqa: E402


def build_vae(cfg):
    c = cfg["vqvae"]
    return models.VQVAE(vocab_size=c["V"], z_channels=c["Cvae"], ch=c["ch"], ch_mult=tuple(c["ch_mult"]),
                        num_res_blocks=c["num_res_blocks"], beta=c["beta"], quant_conv_ks=c["quant_conv_ks"],
                        quant_resi=c["quant_resi"], share_quant_resi=c["share_quant_resi"],
                        v_patch_nums=tuple(c["patch_nums"]), using_sa=c["using_sa"], using_mid_sa=c["using_mid_sa"])


def build_var(cfg, num_classes):
    c = cfg["var"]
    return models.VAR(vocab_size=cfg["vqvae"]["V"], Cvae=cfg["vqvae"]["Cvae"], num_classes=num_classes,
                      depth=c["depth"], embed_dim=c["embed_dim"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"],
                      norm_eps=c["norm_eps"], cond_drop_rate=c["cond_drop_rate"],
                      patch_nums=tuple(cfg["vqvae"]["patch_nums"]), drop_path_rate=c.get("drop_path_rate", 0.0))


@torch.no_grad()
def tokenize(vae, X, bs=256):
    """images (N,3,32,32) in [-1,1] -> tokens (N, L) int64 (scales concatenated, row-major)."""
    vae.eval()
    out = []
    for i in range(0, X.shape[0], bs):
        out.append(torch.cat(vae.img_to_idxBl(X[i:i + bs]), dim=1))
    return torch.cat(out)


def split_tokens(tok, patch_nums):
    res, cur = [], 0
    for pn in patch_nums:
        res.append(tok[:, cur:cur + pn * pn])
        cur += pn * pn
    return res


@torch.no_grad()
def var_inputs(vae, tok, patch_nums, bs=512):
    out = []
    for i in range(0, tok.shape[0], bs):
        out.append(vae.quantize.idxBl_to_var_input(split_tokens(tok[i:i + bs], patch_nums)))
    return torch.cat(out)


@torch.no_grad()
def token_ce(var, vin, tok, labels, attention="markov", bs=256):
    """Teacher-forced CE per scale (nats/token), no label dropout. Returns (mean CE, list per scale, top1 acc)."""
    var.eval()
    mask = var.attn_mask(attention)
    tot = torch.zeros(var.L, device=tok.device)
    correct = torch.zeros(var.L, device=tok.device)
    for i in range(0, tok.shape[0], bs):
        lg = var(labels[i:i + bs], vin[i:i + bs], mask, cond_drop=0.0)
        tot += F.cross_entropy(lg.transpose(1, 2), tok[i:i + bs], reduction="none").sum(0)
        correct += (lg.argmax(-1) == tok[i:i + bs]).float().sum(0)
    tot /= tok.shape[0]
    correct /= tok.shape[0]
    per = [tot[b:e].mean().item() for b, e in var.begin_ends]
    acc = correct.mean().item()
    var.train()
    return tot.mean().item(), per, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=None)
    ap.add_argument("--vae", default=None)
    ap.add_argument("--var", default=None)
    ap.add_argument("--npz", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log", default=os.path.join(HERE, "logs", "eval_tokens.log"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    log = Logger(args.log)
    dev = torch.device(args.device)
    d = load_data(args.npz or cfg["data"]["npz"])
    pn = tuple(cfg["vqvae"]["patch_nums"])
    ho = d["split"] == 1
    X = to_tensor_images(d["images"][ho]).to(dev)
    y = torch.from_numpy(d["labels"][ho]).to(dev)
    vae = build_vae(cfg)
    vae.load_state_dict(torch.load(args.vae or os.path.join(cfg["out_dir"], "vae.pth"), weights_only=True))
    vae.to(dev).eval()
    tok = tokenize(vae, X)
    rec = vae.idxBl_to_img(split_tokens(tok, pn))
    p, mse = psnr_01(rec, X)
    used = [int(torch.unique(t).numel()) for t in split_tokens(tok, pn)]
    log(f"held-out images {X.shape[0]}: VQVAE recon PSNR {p:.2f} dB (mse {mse:.5f} on [0,1]); "
        f"codes used {int(torch.unique(tok).numel())}/{vae.V}, per scale {used}")
    num_classes = len(d["class_names"])
    var = build_var(cfg, num_classes)
    var.load_state_dict(torch.load(args.var or os.path.join(cfg["out_dir"], "var.pth"), weights_only=True))
    var.to(dev).eval()
    vin = var_inputs(vae, tok, pn)
    for att in ("markov", "causal"):
        for lab_name, lab in (("label", y), ("null", torch.full_like(y, num_classes))):
            ce, per, acc = token_ce(var, vin, tok, lab, att)
            log(f"held-out token CE [{att:6s}, {lab_name:5s}] mean {ce:.4f} nats (ppl {math.exp(ce):.1f}), top1 acc {acc:.3f}; "
                f"per scale {[round(v, 3) for v in per]}")


if __name__ == "__main__":
    main()
