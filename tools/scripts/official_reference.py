#!/usr/bin/env python3
"""Self-contained PyTorch reference for VAR + VQVAE checkpoints in the official format.

A re-implementation of the official FoundationVision/VAR inference code (models/vqvae.py, basic_vae.py,
quant.py, var.py, basic_var.py, helpers.py) written from shared/reference/VAR_SPEC.md sections 2-9, using the
same torch operators in the same order, so that float32 results match the official code to rounding noise
(bit-exact on the tiny fixture with the same torch build and thread count). No official code is imported.

It loads any official-format state dict (`.pth` via torch.load(weights_only=True), also nested training
checkpoints and `_orig_mod.` prefixes, or `.safetensors`) and infers every size from the keys: VAR depth /
width / heads / vocabulary / classes / schedule (from `lvl_1L`), VQVAE width / ch_mult / levels / res-blocks /
attention / Phi count.

Sub-commands
  sample          greedy (top_k=1, default) or top-k/top-p CFG sampling, Markovian (block-diagonal: every
                  scale run alone, no KV cache) or causal (official block-causal with KV cache); saves tokens
                  per scale, f_hat per scale, CFG-mixed logits per scale (--save-logits) and the image to a
                  .safetensors file. --timings also prints one line 'timings: {json}' with the load, scale-loop
                  and decoder seconds (read by scripts/bench-vs-pytorch).
  verify-fixture  run every case of a golden fixture (tests/fixtures/<name>/manifest.json) and compare with
                  its reference.safetensors: tokenize, decode, teacher_forced, sample, edit.

Examples
  python tools/scripts/official_reference.py verify-fixture tests/fixtures/tiny-official-schedule
  python tools/scripts/official_reference.py sample --var /work/scratch/d16/var_d16.pth \\
      --vae /work/scratch/d16/vae_ch160v4096z32.pth --label 3 --seed 0 --cfg 1.5 --attention markov \\
      --out /work/scratch/d16/ref_markov_c3_s0.safetensors

Output tensor names (sample): idx_{si} int64 (1, pn*pn) row-major; fhat_{si} float32 (1, Cvae, P, P) after the
scale's update; logits_{si} float32 (1, pn*pn, V) CFG-mixed (before top-k) when --save-logits; image float32
(1, 3, H, W) in [0, 1] ((clamp(x,-1,1)+1)/2, exactly what the official loop returns). The safetensors metadata
holds the arguments, the inferred configs and per-scale diagnostics (min top1-top2 logit gap).
"""
import argparse
import json
import math
import os
import re
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_PATCH_NUMS = {680: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 2240: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}


# ==========================================================================================================
# Checkpoint loading (VAR_SPEC.md section 6)
# ==========================================================================================================

def load_state_dict(path, nested_key=None):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    # Nested training checkpoints: {'trainer': {'var_wo_ddp': ..., 'vae_local': ...}}.
    if isinstance(sd, dict) and "trainer" in sd and isinstance(sd["trainer"], dict):
        tr = sd["trainer"]
        key = nested_key or ("var_wo_ddp" if "var_wo_ddp" in tr else "vae_local")
        sd = tr[key]
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith("_orig_mod."):
            k = k[len("_orig_mod."):]
        out[k] = v
    return out


# ==========================================================================================================
# VQVAE (section 2) and multi-scale quantizer (section 3)
# ==========================================================================================================

def _count_indices(sd, pattern):
    rx = re.compile(pattern)
    s = set()
    for k in sd:
        m = rx.match(k)
        if m:
            s.add(int(m.group(1)))
    return len(s)


class VQVAERef:
    def __init__(self, sd, patch_nums):
        self.sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        sd = self.sd
        self.V, self.Cvae = sd["quantize.embedding.weight"].shape
        self.n_levels = _count_indices(sd, r"decoder\.up\.(\d+)\.")
        self.ch = sd["decoder.conv_out.weight"].shape[1]  # output width of decoder level 0 == ch * ch_mult[0]
        self.dec_blocks = _count_indices(sd, r"decoder\.up\.0\.block\.(\d+)\.")
        self.has_encoder = "encoder.conv_in.weight" in sd
        self.enc_blocks = _count_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.") if self.has_encoder else None
        self.n_phi = _count_indices(sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.")
        # Level widths, from the decoder (each up level's last block outputs ch*ch_mult[level]).
        self.level_widths = [sd[f"decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in range(self.n_levels)]
        self.patch_nums = tuple(patch_nums)
        K = self.n_phi
        # Official PhiPartiallyShared ticks (np.linspace, float64; ties resolved by np.argmin).
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
        self.resi_ratio = 0.5

    def config(self):
        return dict(V=int(self.V), Cvae=int(self.Cvae), n_levels=self.n_levels, level_widths=self.level_widths,
                    dec_res_blocks=self.dec_blocks, enc_res_blocks=self.enc_blocks, n_phi=self.n_phi,
                    has_encoder=self.has_encoder, patch_nums=list(self.patch_nums))

    # ---- building blocks (basic_vae.py) ----
    def conv(self, p, x, stride=1, padding=None):
        w = self.sd[p + ".weight"]
        if padding is None:
            padding = w.shape[-1] // 2
        return F.conv2d(x, w, self.sd[p + ".bias"], stride=stride, padding=padding)

    def gn(self, p, x):
        return F.group_norm(x, 32, self.sd[p + ".weight"], self.sd[p + ".bias"], eps=1e-6)

    def resblock(self, p, x):
        h = self.conv(p + ".conv1", F.silu(self.gn(p + ".norm1", x)))
        h = self.conv(p + ".conv2", F.silu(self.gn(p + ".norm2", h)))
        sc = self.conv(p + ".nin_shortcut", x, padding=0) if (p + ".nin_shortcut.weight") in self.sd else x
        return sc + h

    def attnblock(self, p, x):
        qkv = self.conv(p + ".qkv", self.gn(p + ".norm", x), padding=0)
        B, _, H, W = qkv.shape
        C = x.shape[1]
        q, k, v = qkv.reshape(B, 3, C, H, W).unbind(1)
        q = q.view(B, C, H * W).permute(0, 2, 1).contiguous()
        k = k.view(B, C, H * W).contiguous()
        w = torch.bmm(q, k).mul_(int(C) ** (-0.5))
        w = F.softmax(w, dim=2)
        v = v.view(B, C, H * W).contiguous()
        w = w.permute(0, 2, 1).contiguous()
        h = torch.bmm(v, w)
        h = h.view(B, C, H, W).contiguous()
        return x + self.conv(p + ".proj_out", h, padding=0)

    # ---- encoder / decoder ----
    def encoder(self, x):
        h = self.conv("encoder.conv_in", x)
        n = self.n_levels
        for lvl in range(n):
            for b in range(self.enc_blocks):
                h = self.resblock(f"encoder.down.{lvl}.block.{b}", h)
                if f"encoder.down.{lvl}.attn.{b}.qkv.weight" in self.sd:
                    h = self.attnblock(f"encoder.down.{lvl}.attn.{b}", h)
            if lvl != n - 1:
                h = self.conv(f"encoder.down.{lvl}.downsample.conv", F.pad(h, pad=(0, 1, 0, 1), mode="constant", value=0),
                              stride=2, padding=0)
        h = self.resblock("encoder.mid.block_1", h)
        if "encoder.mid.attn_1.qkv.weight" in self.sd:
            h = self.attnblock("encoder.mid.attn_1", h)
        h = self.resblock("encoder.mid.block_2", h)
        return self.conv("encoder.conv_out", F.silu(self.gn("encoder.norm_out", h)))

    def decoder(self, z):
        h = self.conv("decoder.conv_in", z)
        h = self.resblock("decoder.mid.block_1", h)
        if "decoder.mid.attn_1.qkv.weight" in self.sd:
            h = self.attnblock("decoder.mid.attn_1", h)
        h = self.resblock("decoder.mid.block_2", h)
        for lvl in reversed(range(self.n_levels)):
            for b in range(self.dec_blocks):
                h = self.resblock(f"decoder.up.{lvl}.block.{b}", h)
                if f"decoder.up.{lvl}.attn.{b}.qkv.weight" in self.sd:
                    h = self.attnblock(f"decoder.up.{lvl}.attn.{b}", h)
            if lvl != 0:
                h = self.conv(f"decoder.up.{lvl}.upsample.conv", F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv("decoder.conv_out", F.silu(self.gn("decoder.norm_out", h)))

    def fhat_to_img_raw(self, f_hat):
        return self.decoder(self.conv("post_quant_conv", f_hat))

    def fhat_to_img(self, f_hat):
        """Decoder output clamped to [-1, 1] (official VQVAE.fhat_to_img)."""
        return self.fhat_to_img_raw(f_hat).clamp_(-1, 1)

    # ---- quantizer (quant.py) ----
    def phi_index(self, at_0_1):
        return int(np.argmin(np.abs(self.ticks - at_0_1)).item())

    def phi(self, k, h):
        r = self.resi_ratio
        p = f"quantize.quant_resi.qresi_ls.{k}"
        return h.mul(1 - r) + self.conv(p, h).mul_(r)

    def embedding(self, idx):
        return F.embedding(idx, self.sd["quantize.embedding.weight"])

    def img_to_f(self, img):
        return self.conv("quant_conv", self.encoder(img))

    def f_to_idx(self, f, patch_nums=None):
        """Official f_to_idxBl_or_fhat: returns (list of idx (B, pn*pn), list of f_hat after each scale)."""
        patch_nums = patch_nums or self.patch_nums
        B, C, H, W = f.shape
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        SN = len(patch_nums)
        emb = self.sd["quantize.embedding.weight"]
        idx_list, fhat_list = [], []
        for si, pn in enumerate(patch_nums):
            z_NC = (F.interpolate(f_rest, size=(pn, pn), mode="area").permute(0, 2, 3, 1).reshape(-1, C)
                    if si != SN - 1 else f_rest.permute(0, 2, 3, 1).reshape(-1, C))
            d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(emb.square(), dim=1, keepdim=False)
            d.addmm_(z_NC, emb.T, alpha=-2, beta=1)
            idx_N = torch.argmin(d, dim=1)
            idx_Bhw = idx_N.view(B, pn, pn)
            h = (F.interpolate(self.embedding(idx_Bhw).permute(0, 3, 1, 2), size=(H, W), mode="bicubic").contiguous()
                 if si != SN - 1 else self.embedding(idx_Bhw).permute(0, 3, 1, 2).contiguous())
            h = self.phi(self.phi_index(si / (SN - 1)), h)
            f_hat.add_(h)
            f_rest.sub_(h)
            idx_list.append(idx_N.reshape(B, pn * pn))
            fhat_list.append(f_hat.clone())
        return idx_list, fhat_list

    def idx_to_fhat(self, idx_list, patch_nums=None):
        """Official embed_to_fhat(all_to_max_scale=True) on codebook[idx]; returns the final f_hat."""
        patch_nums = patch_nums or self.patch_nums
        B = idx_list[0].shape[0]
        P = patch_nums[-1]
        SN = len(patch_nums)
        f_hat = torch.zeros(B, self.Cvae, P, P, dtype=torch.float32)
        for si, pn in enumerate(patch_nums):
            h = self.embedding(idx_list[si]).transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            if si < SN - 1:
                h = F.interpolate(h, size=(P, P), mode="bicubic")
            f_hat.add_(self.phi(self.phi_index(si / (SN - 1)), h))
        return f_hat

    def idx_to_var_input(self, idx_list, patch_nums=None):
        """Official idxBl_to_var_input: teacher-forcing inputs (B, L-1, Cvae)."""
        patch_nums = patch_nums or self.patch_nums
        B = idx_list[0].shape[0]
        C = self.Cvae
        P = patch_nums[-1]
        SN = len(patch_nums)
        f_hat = torch.zeros(B, C, P, P, dtype=torch.float32)
        pn_next = patch_nums[0]
        nxt = []
        for si in range(SN - 1):
            h = F.interpolate(self.embedding(idx_list[si]).transpose_(1, 2).view(B, C, pn_next, pn_next),
                              size=(P, P), mode="bicubic")
            f_hat.add_(self.phi(self.phi_index(si / (SN - 1)), h))
            pn_next = patch_nums[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1)

    def next_ar_input(self, si, SN, f_hat, h_BChw, pn_next, phi_k=None):
        """Official get_next_autoregressive_input: conv after the bicubic upsample; last scale not resized."""
        P = f_hat.shape[-1]
        if phi_k is None:
            phi_k = self.phi_index(si / (SN - 1))
        if si != SN - 1:
            h = self.phi(phi_k, F.interpolate(h_BChw, size=(P, P), mode="bicubic"))
            f_hat.add_(h)
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
        h = self.phi(phi_k, h_BChw)
        f_hat.add_(h)
        return f_hat, f_hat


# ==========================================================================================================
# VAR transformer (section 5)
# ==========================================================================================================

class VARRef:
    def __init__(self, sd, norm_eps=1e-6):
        self.sd = sd
        self.depth = _count_indices(sd, r"blocks\.(\d+)\.")
        self.C = sd["pos_start"].shape[-1]
        self.H = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in sd else self.C // 64
        self.l2_norm = "blocks.0.attn.scale_mul_1H11" in sd
        self.hd = self.C // self.H
        self.V = sd["head.weight"].shape[0]
        self.Cvae = sd["word_embed.weight"].shape[1]
        self.num_classes = sd["class_emb.weight"].shape[0] - 1
        self.L = sd["pos_1LC"].shape[1]
        self.SN = sd["lvl_embed.weight"].shape[0]
        self.shared_aln = "shared_ada_lin.1.weight" in sd
        self.eps = norm_eps
        if "lvl_1L" in sd:
            counts = torch.bincount(sd["lvl_1L"].reshape(-1).long(), minlength=self.SN).tolist()
            pns = []
            for c in counts:
                r = int(round(math.sqrt(c)))
                assert r * r == c, f"lvl_1L level size {c} is not a square"
                pns.append(r)
            self.patch_nums = tuple(pns)
        else:
            self.patch_nums = DEFAULT_PATCH_NUMS[self.L]
        assert sum(p * p for p in self.patch_nums) == self.L
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        self.lvl_1L = lvl.transpose(1, 2)[:, 0].contiguous()
        self.max_scale_mul = torch.log(torch.tensor(100)).item()

    def config(self):
        return dict(depth=self.depth, C=int(self.C), heads=int(self.H), V=int(self.V), Cvae=int(self.Cvae),
                    num_classes=int(self.num_classes), L=int(self.L), patch_nums=list(self.patch_nums),
                    shared_aln=self.shared_aln, attn_l2_norm=self.l2_norm)

    def mask(self, kind):
        d = self.lvl_1L.view(1, self.L, 1)
        dT = d.transpose(1, 2)
        if kind == "causal":
            return torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        if kind == "markov":
            return torch.where(d == dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        raise ValueError(kind)

    def lvl_pos(self):
        return F.embedding(self.lvl_1L, self.sd["lvl_embed.weight"]) + self.sd["pos_1LC"]

    def lin(self, p, x, bias=True):
        return F.linear(x, self.sd[p + ".weight"], self.sd[p + ".bias"] if bias else None)

    def cond_gss(self, cond_BD):
        if self.shared_aln:
            return self.lin("shared_ada_lin.1", F.silu(cond_BD)).view(-1, 1, 6, self.C)
        return cond_BD

    def ln(self, x):
        return F.layer_norm(x, (self.C,), None, None, self.eps)

    def attn(self, i, x, attn_bias, cache):
        p = f"blocks.{i}.attn"
        sd = self.sd
        B, L, C = x.shape
        qkv_bias = torch.cat((sd[p + ".q_bias"], sd[p + ".zero_k_bias"] if (p + ".zero_k_bias") in sd
                              else torch.zeros_like(sd[p + ".q_bias"]), sd[p + ".v_bias"]))
        qkv = F.linear(input=x, weight=sd[p + ".mat_qkv.weight"], bias=qkv_bias).view(B, L, 3, self.H, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # BHLc
        if self.l2_norm:
            scale = 1
            scale_mul = sd[p + ".scale_mul_1H11"].clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        else:
            scale = 0.25 / math.sqrt(self.hd)
        if cache is not None:
            if i in cache:
                ck, cv = cache[i]
                k = torch.cat((ck, k), dim=2)
                v = torch.cat((cv, v), dim=2)
            cache[i] = (k, v)
        oup = F.scaled_dot_product_attention(query=q, key=k, value=v, scale=scale, attn_mask=attn_bias,
                                             dropout_p=0.0).transpose(1, 2).reshape(B, L, C)
        return self.lin(p + ".proj", oup)

    def ffn(self, i, x):
        p = f"blocks.{i}.ffn"
        return self.lin(p + ".fc2", F.gelu(self.lin(p + ".fc1", x), approximate="tanh"))

    def block(self, i, x, cond_gss, attn_bias, cache):
        if self.shared_aln:
            g1, g2, s1, s2, b1, b2 = (self.sd[f"blocks.{i}.ada_gss"] + cond_gss).unbind(2)
        else:
            g1, g2, s1, s2, b1, b2 = self.lin(f"blocks.{i}.ada_lin.1", F.silu(cond_gss)).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.attn(i, self.ln(x).mul(s1.add(1)).add_(b1), attn_bias, cache).mul_(g1)
        x = x + self.ffn(i, self.ln(x).mul(s2.add(1)).add_(b2)).mul(g2)
        return x

    def blocks(self, x, cond_gss, attn_bias=None, cache=None):
        for i in range(self.depth):
            x = self.block(i, x, cond_gss, attn_bias, cache)
        return x

    def get_logits(self, h, cond_BD):
        scale, shift = self.lin("head_nm.ada_lin.1", F.silu(cond_BD)).view(-1, 1, 2, self.C).unbind(2)
        h = self.ln(h.float()).mul(scale.add(1)).add_(shift)
        return self.lin("head", h.float()).float()

    def teacher_forced(self, label_B, var_input, attention):
        """Official VAR.forward with cond_drop_rate = 0; attention 'causal' (official mask) or 'markov'."""
        B = var_input.shape[0]
        sos = cond_BD = F.embedding(label_B, self.sd["class_emb.weight"])
        sos = sos.unsqueeze(1).expand(B, 1, -1) + self.sd["pos_start"].expand(B, 1, -1)
        x = torch.cat((sos, self.lin("word_embed", var_input.float())), dim=1)
        x += F.embedding(self.lvl_1L.expand(B, -1), self.sd["lvl_embed.weight"]) + self.sd["pos_1LC"]
        x = self.blocks(x, self.cond_gss(cond_BD), self.mask(attention), None)
        return self.get_logits(x.float(), cond_BD)


# ==========================================================================================================
# Sampling (sections 7, 8, 9, 10, 11.5)
# ==========================================================================================================

def sample_top_k_top_p_(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    """Official sample_with_top_k_top_p_ (in-place filtering, then multinomial)."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        top_k = min(top_k, V)
        idx_to_remove = logits_BlV < logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(idx_to_remove, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        sorted_idx_to_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_idx_to_remove[..., -1:] = False
        logits_BlV.masked_fill_(sorted_idx_to_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_idx_to_remove), -torch.inf)
    replacement = num_samples >= 0
    num_samples = abs(num_samples)
    return torch.multinomial(logits_BlV.softmax(dim=-1).view(-1, V), num_samples=num_samples,
                             replacement=replacement, generator=rng).view(B, l, num_samples)


def gumbel_softmax_with_rng(logits, tau=1.0, dim=-1, rng=None):
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    gumbels = (logits + gumbels) / tau
    return gumbels.softmax(dim)


def bilinear_force(keep_mask, pn):
    """Official demo replace_embedding force mask: bilinear resize, strict > 0.5, all forced if pn*pn <= 3."""
    m = keep_mask
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim == 3:
        m = m.unsqueeze(1)
    force = F.interpolate(m.to(torch.float), size=(pn, pn), mode="bilinear", align_corners=False).gt(0.5).int()
    if pn * pn <= 3:
        force.fill_(1)
    return force  # (B, 1, pn, pn) int32


@torch.no_grad()
def sample(var, vae, label, cfg=1.5, seed=0, attention="markov", top_k=1, top_p=0.0, more_smooth=False,
           schedule=None, levels=None, phi_index=None, cfg_table=None, edit_source=None, edit_keep_mask=None,
           save_logits=False, B=1, timings=None):
    """VAR.autoregressive_infer_cfg (attention='causal': KV cache, no mask) or its Markovian variant
    (attention='markov': every scale run alone, no cache, no mask).

    schedule: list of patch sizes (default: the model's); levels: level index of each step in the model's full
    schedule (its lvl_embed row and pos_1LC slice; default: index of pn in the full schedule);
    phi_index: Phi conv per step (default: official tick rule with SN = len(schedule));
    cfg_table: per-step guidance t (default cfg*si/(SN-1)); edit_source / edit_keep_mask: zero-shot
    in-painting as in the official demo notebook (force-replace embeddings with the source tokens).
    timings: a dict to receive wall seconds of the scale loop ("transformer", which includes the per-scale
    f_hat updates) and of the VQVAE decoder ("decode"); it only reads the clock.
    Returns a dict of tensors and a diagnostics dict."""
    assert attention in ("markov", "causal")
    full = var.patch_nums
    schedule = tuple(schedule or full)
    SN = len(schedule)
    if levels is None:
        levels = [full.index(pn) for pn in schedule]
    if phi_index is None:
        phi_index = [vae.phi_index(si / (SN - 1)) for si in range(SN)]
    if cfg_table is None:
        cfg_table = [cfg * (si / (SN - 1)) for si in range(SN)]
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    sd = var.sd
    nc = var.num_classes
    label_B = torch.full((B,), fill_value=nc if label < 0 else label, dtype=torch.int64)
    sos = cond_BD = F.embedding(torch.cat((label_B, torch.full_like(label_B, fill_value=nc)), dim=0), sd["class_emb.weight"])
    lvl_pos = var.lvl_pos()
    first_l = schedule[0] ** 2
    b0, e0 = var.begin_ends[levels[0]]
    next_token_map = (sos.unsqueeze(1).expand(2 * B, first_l, -1) + sd["pos_start"].expand(2 * B, first_l, -1)
                      + lvl_pos[:, b0:b0 + first_l])
    P = schedule[-1]
    f_hat = sos.new_zeros(B, var.Cvae, P, P)
    cache = {} if attention == "causal" else None
    cond_gss = var.cond_gss(cond_BD)
    out = OrderedDict()
    diag = {"min_top1_top2_gap": [], "unique_tokens": [], "phi_index": list(phi_index), "levels": list(levels),
            "cfg_t": [float(t) for t in cfg_table]}
    t_loop = time.perf_counter()
    for si, pn in enumerate(schedule):
        ratio = si / (SN - 1)
        x = next_token_map
        x = var.blocks(x, cond_gss, None, cache)
        logits_BlV = var.get_logits(x, cond_BD)
        t = cfg_table[si]
        logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
        top2 = logits_BlV.topk(2, dim=-1)[0]
        diag["min_top1_top2_gap"].append(float((top2[..., 0] - top2[..., 1]).min()))
        if save_logits:
            out[f"logits_{si}"] = logits_BlV.clone()
        idx_Bl = sample_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
        if not more_smooth:
            h_BChw = vae.embedding(idx_Bl)
        else:
            gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BChw = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=gum_t, dim=-1, rng=rng) @ \
                vae.sd["quantize.embedding.weight"].unsqueeze(0)
        h_BChw = h_BChw.transpose_(1, 2).reshape(B, var.Cvae, pn, pn)
        if edit_source is not None:
            gt = vae.embedding(edit_source[si]).transpose_(1, 2).reshape(B, var.Cvae, pn, pn)
            force = bilinear_force(edit_keep_mask, pn)
            h_BChw = gt * force + h_BChw * (1 - force)
            out[f"force_{si}"] = force
            idx_Bl = torch.where(force.view(B, -1).bool(), edit_source[si], idx_Bl)
        out[f"idx_{si}"] = idx_Bl.clone()
        diag["unique_tokens"].append(int(idx_Bl.unique().numel()))
        pn_next = schedule[si + 1] if si + 1 < SN else pn
        f_hat, next_token_map = vae.next_ar_input(si, SN, f_hat, h_BChw, pn_next, phi_k=phi_index[si])
        out[f"fhat_{si}"] = f_hat.clone()
        if si != SN - 1:
            b, _ = var.begin_ends[levels[si + 1]]
            next_token_map = next_token_map.view(B, var.Cvae, -1).transpose(1, 2)
            next_token_map = var.lin("word_embed", next_token_map) + lvl_pos[:, b:b + pn_next ** 2]
            next_token_map = next_token_map.repeat(2, 1, 1)
    t_decode = time.perf_counter()
    out["image"] = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
    if timings is not None:
        timings["transformer"] = t_decode - t_loop
        timings["decode"] = time.perf_counter() - t_decode
    return out, diag


# ==========================================================================================================
# Fixture verification
# ==========================================================================================================

def _expand(key, n):
    return [key.replace("{si}", str(si)) for si in range(n)] if "{si}" in key else [key]


def verify_fixture(fixture_dir, threads=2, verbose=True):
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    man = json.load(open(os.path.join(fixture_dir, "manifest.json")))
    ref = load_file(os.path.join(fixture_dir, "reference.safetensors"))
    var = VARRef(load_state_dict(os.path.join(fixture_dir, "var.pth")))
    vae = VQVAERef(load_state_dict(os.path.join(fixture_dir, "vae.pth")), var.patch_nums)
    full = var.patch_nums
    gt_idx = [ref[f"gt_idx_{si}"] for si in range(len(full))]
    all_ok = True
    report = []

    def check(case_id, got, expect, n_steps):
        nonlocal all_ok
        for e in expect:
            for key in _expand(e["key"], n_steps):
                gkey = key
                if gkey not in got:
                    report.append((case_id, key, "MISSING", None))
                    all_ok = False
                    continue
                g, r = got[gkey], ref[key]
                if e.get("exact") or not r.is_floating_point():
                    ok = g.shape == r.shape and torch.equal(g.to(r.dtype), r)
                    diff = None if ok else int((g.to(r.dtype) != r).sum()) if g.shape == r.shape else "shape"
                else:
                    atol, rtol = e.get("atol", 1e-4), e.get("rtol", 1e-4)
                    g = g.to(r.dtype)
                    ok = g.shape == r.shape and bool(((g - r).abs() <= atol + rtol * r.abs()).all())
                    diff = float((g - r).abs().max()) if g.shape == r.shape else "shape"
                all_ok &= ok
                report.append((case_id, key, "ok" if ok else "FAIL", diff))

    with torch.no_grad():
        for case in man["cases"]:
            cid, kind = case["id"], case["kind"]
            t0 = time.time()
            got = {}
            n_steps = len(full)
            if kind == "tokenize":
                f = vae.img_to_f(ref[case["input"]])
                idx, fhats = vae.f_to_idx(f)
                got["enc_f"] = f
                got.update({f"gt_idx_{si}": t for si, t in enumerate(idx)})
                got["gt_fhat"] = vae.idx_to_fhat(idx)
                got["recon_image"] = vae.fhat_to_img(got["gt_fhat"])
                got["encoder_side_fhat_maxdiff"] = torch.tensor(float((fhats[-1] - got["gt_fhat"]).abs().max()))
            elif kind == "decode":
                raw = vae.fhat_to_img_raw(ref[case["input"]])
                got["decode_out_raw"] = raw
                got["decode_out"] = raw.clamp(-1, 1)
            elif kind == "teacher_forced":
                toks = [ref[k] for k in _expand(case["tokens"], n_steps)]
                vin = vae.idx_to_var_input(toks)
                got["var_input"] = vin
                label = torch.tensor([case["label"]])
                logits = var.teacher_forced(label, vin, case["attention"])
                for e in case["expect"]:
                    got[e["key"]] = logits
            elif kind in ("sample", "edit"):
                sched = None if case.get("schedule", "full") == "full" else case["schedule"]
                prefix = {"sample_causal_cfg1.5": "causal_cfg1.5", "sample_causal_cfg4": "causal_cfg4",
                          "sample_causal_null": "causal_null", "sample_markov_cfg1.5": "markov_cfg1.5"}.get(cid, cid)
                kw = {}
                if kind == "edit":
                    kw = dict(edit_source=[ref[k] for k in _expand(case["source_tokens"], n_steps)],
                              edit_keep_mask=ref[case["keep_mask"]])
                o, diag = sample(var, vae, case["label"], cfg=case["cfg"], seed=case.get("seed", 0),
                                 attention=case["attention"], top_k=case.get("top_k", 1), top_p=case.get("top_p", 0.0),
                                 schedule=sched, levels=case.get("levels"), phi_index=case.get("phi_index"), **kw)
                n_steps = len(sched) if sched else len(full)
                for si in range(n_steps):
                    got[f"{prefix}_idx_{si}"] = o[f"idx_{si}"]
                    got[f"{prefix}_fhat_{si}"] = o[f"fhat_{si}"]
                    if kind == "edit":
                        got[f"edit_force_{si}"] = o[f"force_{si}"]
                got[f"{prefix}_image"] = o["image"]
            else:
                report.append((cid, kind, "SKIPPED (unknown kind)", None))
                continue
            check(cid, got, case["expect"], n_steps)
            if "var_input" in got and "var_input" in ref:
                check(cid, got, [{"key": "var_input", "atol": 1e-4, "rtol": 1e-4}], n_steps)
            if "decode_out_raw" in got and "decode_out_raw" in ref:
                check(cid, got, [{"key": "decode_out_raw", "atol": 1e-4, "rtol": 1e-4}], n_steps)
            if verbose:
                rows = [r for r in report if r[0] == cid]
                bad = [r for r in rows if r[2] != "ok"]
                fmax = max([r[3] for r in rows if isinstance(r[3], float)] + [0.0])
                print(f"[{'PASS' if not bad else 'FAIL'}] {cid:24s} {len(rows):3d} tensors, "
                      f"max float |diff| {fmax:.3g}, {time.time() - t0:.2f}s")
                for r in bad:
                    print(f"        {r[1]}: {r[2]} {r[3]}")
    return all_ok, report


# ==========================================================================================================
# CLI
# ==========================================================================================================

def cmd_sample(args):
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    t0 = time.time()
    var = VARRef(load_state_dict(args.var))
    vae = VQVAERef(load_state_dict(args.vae), var.patch_nums)
    t_load = time.time() - t0
    schedule = [int(s) for s in args.schedule.split(",")] if args.schedule else None
    t1 = time.time()
    phases = {}
    out, diag = sample(var, vae, args.label, cfg=args.cfg, seed=args.seed, attention=args.attention,
                       top_k=args.top_k, top_p=args.top_p, more_smooth=args.more_smooth, schedule=schedule,
                       save_logits=args.save_logits, timings=phases)
    t_sample = time.time() - t1
    meta = {"args": json.dumps(vars(args)), "var_config": json.dumps(var.config()),
            "vae_config": json.dumps(vae.config()), "diagnostics": json.dumps(diag),
            "torch_version": torch.__version__, "threads": str(args.threads),
            "seconds_load": f"{t_load:.2f}", "seconds_sample_and_decode": f"{t_sample:.2f}"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, args.out, metadata=meta)
    print(f"VAR {var.config()}")
    print(f"VQVAE {vae.config()}")
    print(f"min top1-top2 gap per scale: {[round(g, 5) for g in diag['min_top1_top2_gap']]}")
    print(f"unique tokens per scale: {diag['unique_tokens']}")
    img = out["image"]
    print(f"image {tuple(img.shape)} mean {img.mean():.4f} std {img.std():.4f} "
          f"min {img.min():.4f} max {img.max():.4f}")
    print(f"load {t_load:.2f}s, sample+decode {t_sample:.2f}s ({args.threads} threads); wrote {args.out}")
    if args.timings:
        # One machine-readable line for scripts/bench-vs-pytorch.
        print("timings: " + json.dumps({"load": round(t_load, 4), "transformer": round(phases["transformer"], 4),
                                        "decode": round(phases["decode"], 4), "threads": args.threads}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="CFG sampling; save tokens, f_hat and image to .safetensors")
    s.add_argument("--var", required=True)
    s.add_argument("--vae", required=True)
    s.add_argument("--label", "--class", type=int, default=3, dest="label", help="class index; negative = null class")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cfg", type=float, default=1.5)
    s.add_argument("--attention", choices=["markov", "causal"], default="markov")
    s.add_argument("--top-k", type=int, default=1)
    s.add_argument("--top-p", type=float, default=0.0)
    s.add_argument("--more-smooth", action="store_true")
    s.add_argument("--schedule", default=None, help="comma-separated subset of the model's patch sizes")
    s.add_argument("--save-logits", action="store_true", help="also store CFG-mixed logits per scale")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--timings", action="store_true",
                   help="also print one line 'timings: {json}' with load / transformer / decode seconds")
    s.add_argument("--out", required=True)
    v = sub.add_parser("verify-fixture", help="reproduce every case of a golden fixture")
    v.add_argument("fixture_dir")
    v.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "sample":
        cmd_sample(args)
        return 0
    ok, report = verify_fixture(args.fixture_dir, threads=args.threads)
    n_bad = sum(1 for r in report if r[2] != "ok")
    print(f"{len(report) - n_bad} passed, {n_bad} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
