#!/usr/bin/env python3
"""Random-initialised checkpoints in the exact format of the released VAR files.

Writes, into --out-dir:

  vae_ch160v4096z32.pth          324 entries, the key names / order / shapes / dtypes of the released tokenizer
  var_d{depth}.pth               220 entries at depth 16 (13 per block + 12), same layout as var_d16.pth
  vae_ch160v4096z32.safetensors  the same tensors (safetensors.torch.save_file)
  var_d{depth}.safetensors

Both .pth files are a plain `torch.save(OrderedDict)` (zip container, pickle protocol 2), like the official
ones. All tensors are float32 except `lvl_1L` (int64). Buffers are included with the values the official
constructors give them: `quantize.ema_vocab_hit_SV` zeros (10, 4096), `lvl_1L` (scale index per token),
`attn_bias_for_masking` (0 / -inf block-causal), `blocks.*.attn.zero_k_bias` zeros.

The architecture is written here as plain functions that yield (name, shape) lists, following
shared/reference/VAR_SPEC.md sections 2.5, 5.9 and Appendix A. The script asserts the entry counts (324 / 220
at d16) and the parameter counts (VQVAE 108,948,355; VAR-d16 310,283,520 excluding buffers).

Initialisation (not the official training init: chosen so that every branch matters, like the
tests/fixtures/tiny-official-schedule fixture):
  conv / linear weights  N(0, 1/fan_in)            (quant_conv x3, decoder.conv_out x0.5, head x3)
  conv / linear biases   N(0, 0.02^2)
  GroupNorm              weight 1 + N(0, 0.1^2), bias N(0, 0.1^2)
  codebook               N(0, 1)
  pos_start, pos_1LC, class_emb, lvl_embed   N(0, 0.5^2)
  scale_mul_1H11         ln 4 + N(0, 0.3^2)
  q_bias, v_bias         N(0, 0.1^2)
  ada_lin.1.weight, head_nm.ada_lin.1.weight   N(0, 1.5/fan_in)   (AdaLN gammas/scales/shifts come out O(0.3))
All random draws come from one torch.Generator(seed), in file order (VQVAE first, then VAR).

Usage:
  python tools/scripts/make_random_official.py --out-dir /work/scratch/d16 [--depth 16] [--seed 0]
"""
import argparse
import math
import os
import sys
import time
from collections import OrderedDict

import torch

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

# Known parameter counts of the VAR transformer (excluding buffers), VAR_SPEC.md section 5.1.
VAR_PARAM_COUNTS = {16: 310_283_520, 20: 600_917_136, 24: 1_033_399_360, 30: 2_010_020_356}
VAR_ENTRY_COUNTS = {16: 220, 20: 272, 24: 324, 30: 402}
VAE_PARAM_COUNT = 108_948_355
VAE_ENTRY_COUNT = 324


# ----------------------------------------------------------------------------------------------------------
# Architecture as (name, shape, kind) lists. kind is one of:
#   conv_w, conv_b, lin_w, lin_b, gn_w, gn_b, codebook, buffer_zero, ... (see init_tensor)
# ----------------------------------------------------------------------------------------------------------

def _conv(prefix, cin, cout, k):
    return [(f"{prefix}.weight", (cout, cin, k, k), "conv_w"), (f"{prefix}.bias", (cout,), "conv_b")]


def _gn(prefix, c):
    return [(f"{prefix}.weight", (c,), "gn_w"), (f"{prefix}.bias", (c,), "gn_b")]


def _resblock(prefix, cin, cout):
    out = _gn(f"{prefix}.norm1", cin) + _conv(f"{prefix}.conv1", cin, cout, 3)
    out += _gn(f"{prefix}.norm2", cout) + _conv(f"{prefix}.conv2", cout, cout, 3)
    if cin != cout:
        out += _conv(f"{prefix}.nin_shortcut", cin, cout, 1)
    return out


def _attnblock(prefix, c):
    return _gn(f"{prefix}.norm", c) + _conv(f"{prefix}.qkv", c, 3 * c, 1) + _conv(f"{prefix}.proj_out", c, c, 1)


def encoder_entries(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z=32, in_channels=3,
                    using_sa=True, using_mid_sa=True, prefix="encoder"):
    out = _conv(f"{prefix}.conv_in", in_channels, ch, 3)
    in_ch_mult = (1,) + tuple(ch_mult)
    n = len(ch_mult)
    block_in = ch
    for lvl in range(n):
        block_in = ch * in_ch_mult[lvl]
        block_out = ch * ch_mult[lvl]
        attn = []
        for b in range(num_res_blocks):
            out += _resblock(f"{prefix}.down.{lvl}.block.{b}", block_in, block_out)
            block_in = block_out
            if lvl == n - 1 and using_sa:
                attn += _attnblock(f"{prefix}.down.{lvl}.attn.{b}", block_in)
        out += attn  # module registration order: block list, then attn list, then downsample
        if lvl != n - 1:
            out += _conv(f"{prefix}.down.{lvl}.downsample.conv", block_in, block_in, 3)
    out += _resblock(f"{prefix}.mid.block_1", block_in, block_in)
    if using_mid_sa:
        out += _attnblock(f"{prefix}.mid.attn_1", block_in)
    out += _resblock(f"{prefix}.mid.block_2", block_in, block_in)
    out += _gn(f"{prefix}.norm_out", block_in)
    out += _conv(f"{prefix}.conv_out", block_in, z, 3)
    return out


def decoder_entries(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z=32, out_ch=3,
                    using_sa=True, using_mid_sa=True, prefix="decoder"):
    n = len(ch_mult)
    block_in = ch * ch_mult[-1]
    out = _conv(f"{prefix}.conv_in", z, block_in, 3)
    out += _resblock(f"{prefix}.mid.block_1", block_in, block_in)
    if using_mid_sa:
        out += _attnblock(f"{prefix}.mid.attn_1", block_in)
    out += _resblock(f"{prefix}.mid.block_2", block_in, block_in)
    # The up levels are built from n-1 down to 0 but stored in level order 0..n-1.
    levels = {}
    for lvl in reversed(range(n)):
        block_out = ch * ch_mult[lvl]
        blocks, attn = [], []
        for b in range(num_res_blocks + 1):
            blocks += _resblock(f"{prefix}.up.{lvl}.block.{b}", block_in, block_out)
            block_in = block_out
            if lvl == n - 1 and using_sa:
                attn += _attnblock(f"{prefix}.up.{lvl}.attn.{b}", block_in)
        ups = _conv(f"{prefix}.up.{lvl}.upsample.conv", block_in, block_in, 3) if lvl != 0 else []
        levels[lvl] = blocks + attn + ups
    for lvl in range(n):
        out += levels[lvl]
    out += _gn(f"{prefix}.norm_out", block_in)
    out += _conv(f"{prefix}.conv_out", block_in, out_ch, 3)
    return out


def vqvae_entries(V=4096, z=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, n_phi=4, n_scales=10):
    out = encoder_entries(ch, ch_mult, num_res_blocks, z)
    out += decoder_entries(ch, ch_mult, num_res_blocks, z)
    out.append(("quantize.ema_vocab_hit_SV", (n_scales, V), "buffer_zero"))
    for k in range(n_phi):
        out += _conv(f"quantize.quant_resi.qresi_ls.{k}", z, z, 3)
    out.append(("quantize.embedding.weight", (V, z), "codebook"))
    out += _conv("quant_conv", z, z, 3)
    out += _conv("post_quant_conv", z, z, 3)
    return out


def var_entries(depth=16, V=4096, z=32, num_classes=1000, patch_nums=PATCH_NUMS, mlp_ratio=4.0):
    C = 64 * depth
    H = depth
    L = sum(pn * pn for pn in patch_nums)
    SN = len(patch_nums)
    hidden = round(C * mlp_ratio)
    out = [
        ("pos_start", (1, 1, C), "emb"),
        ("pos_1LC", (1, L, C), "emb"),
        ("lvl_1L", (1, L), "lvl_1L"),
        ("attn_bias_for_masking", (1, 1, L, L), "attn_bias"),
        ("word_embed.weight", (C, z), "lin_w"),
        ("word_embed.bias", (C,), "lin_b"),
        ("class_emb.weight", (num_classes + 1, C), "emb"),
        ("lvl_embed.weight", (SN, C), "emb"),
    ]
    for i in range(depth):
        p = f"blocks.{i}"
        out += [
            (f"{p}.attn.scale_mul_1H11", (1, H, 1, 1), "scale_mul"),
            (f"{p}.attn.q_bias", (C,), "qv_bias"),
            (f"{p}.attn.v_bias", (C,), "qv_bias"),
            (f"{p}.attn.zero_k_bias", (C,), "buffer_zero"),
            (f"{p}.attn.mat_qkv.weight", (3 * C, C), "lin_w"),
            (f"{p}.attn.proj.weight", (C, C), "lin_w"),
            (f"{p}.attn.proj.bias", (C,), "lin_b"),
            (f"{p}.ffn.fc1.weight", (hidden, C), "lin_w"),
            (f"{p}.ffn.fc1.bias", (hidden,), "lin_b"),
            (f"{p}.ffn.fc2.weight", (C, hidden), "lin_w"),
            (f"{p}.ffn.fc2.bias", (C,), "lin_b"),
            (f"{p}.ada_lin.1.weight", (6 * C, C), "ada_w"),
            (f"{p}.ada_lin.1.bias", (6 * C,), "lin_b"),
        ]
    out += [
        ("head_nm.ada_lin.1.weight", (2 * C, C), "ada_w"),
        ("head_nm.ada_lin.1.bias", (2 * C,), "lin_b"),
        ("head.weight", (V, C), "head_w"),
        ("head.bias", (V,), "lin_b"),
    ]
    return out


BUFFER_KINDS = {"buffer_zero", "lvl_1L", "attn_bias"}


def n_params(entries):
    return sum(math.prod(s) for _, s, k in entries if k not in BUFFER_KINDS)


# ----------------------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------------------

WEIGHT_GAIN = {"quant_conv.weight": 3.0, "decoder.conv_out.weight": 0.5}


def level_ids(patch_nums):
    return torch.cat([torch.full((pn * pn,), i, dtype=torch.int64) for i, pn in enumerate(patch_nums)])


def init_tensor(name, shape, kind, g, patch_nums=PATCH_NUMS):
    def randn(std, mean=0.0):
        t = torch.empty(shape, dtype=torch.float32)
        t.normal_(mean=mean, std=std, generator=g)
        return t

    if kind in ("conv_w", "lin_w", "head_w", "ada_w"):
        fan_in = math.prod(shape[1:])
        var = {"ada_w": 1.5}.get(kind, 1.0)
        gain = 3.0 if kind == "head_w" else WEIGHT_GAIN.get(name, 1.0)
        return randn(gain * math.sqrt(var / fan_in))
    if kind in ("conv_b", "lin_b"):
        return randn(0.02)
    if kind == "gn_w":
        return randn(0.1, 1.0)
    if kind == "gn_b":
        return randn(0.1)
    if kind == "codebook":
        return randn(1.0)
    if kind == "emb":
        return randn(0.5)
    if kind == "scale_mul":
        return randn(0.3, math.log(4.0))
    if kind == "qv_bias":
        return randn(0.1)
    if kind == "buffer_zero":
        return torch.zeros(shape, dtype=torch.float32)
    if kind == "lvl_1L":
        t = level_ids(patch_nums).view(1, -1).contiguous()
        assert tuple(t.shape) == tuple(shape)
        return t
    if kind == "attn_bias":
        d = level_ids(patch_nums).view(1, -1, 1)
        dT = d.transpose(1, 2)
        t = torch.where(d >= dT, 0.0, -torch.inf).reshape(shape).to(torch.float32).contiguous()
        return t
    raise ValueError(f"unknown kind {kind} for {name}")


def build_state_dict(entries, g):
    sd = OrderedDict()
    for name, shape, kind in entries:
        assert name not in sd, name
        sd[name] = init_tensor(name, shape, kind, g)
    return sd


# ----------------------------------------------------------------------------------------------------------

def save_both(sd, path_pth, path_st):
    from safetensors.torch import save_file

    t0 = time.time()
    torch.save(sd, path_pth)
    t1 = time.time()
    save_file(OrderedDict((k, v.contiguous()) for k, v in sd.items()), path_st, metadata={"format": "pt"})
    t2 = time.time()
    return t1 - t0, t2 - t1


def verify_file(path, entries):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert list(sd.keys()) == [n for n, _, _ in entries], f"{path}: key list/order mismatch"
    for name, shape, kind in entries:
        t = sd[name]
        want = torch.int64 if kind == "lvl_1L" else torch.float32
        assert tuple(t.shape) == tuple(shape), (name, tuple(t.shape), shape)
        assert t.dtype == want, (name, t.dtype)
    return len(sd)


def verify_safetensors(path, sd_ref):
    from safetensors.torch import load_file

    st = load_file(path)
    assert set(st.keys()) == set(sd_ref.keys())
    for k, v in sd_ref.items():
        assert st[k].dtype == v.dtype and st[k].shape == v.shape and torch.equal(st[k], v), k
    return len(st)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-safetensors", action="store_true")
    ap.add_argument("--no-verify", action="store_true", help="skip re-loading the written files")
    args = ap.parse_args()

    t_start = time.time()
    vae_e = vqvae_entries()
    var_e = var_entries(args.depth)

    # Structural checks against VAR_SPEC.md.
    assert len(vae_e) == VAE_ENTRY_COUNT, len(vae_e)
    assert n_params(vae_e) == VAE_PARAM_COUNT, n_params(vae_e)
    assert sum(math.prod(s) for _, s, k in vae_e if k in BUFFER_KINDS) == 40_960
    dec = sum(math.prod(s) for n, s, k in vae_e if n.startswith(("decoder.", "post_quant_conv.")))
    enc = sum(math.prod(s) for n, s, k in vae_e if n.startswith(("encoder.", "quant_conv.")))
    assert dec == 64_663_171 and enc == 44_117_120, (dec, enc)
    n_var = n_params(var_e)
    assert len(var_e) == 12 + 13 * args.depth
    if args.depth in VAR_PARAM_COUNTS:
        assert n_var == VAR_PARAM_COUNTS[args.depth], (n_var, VAR_PARAM_COUNTS[args.depth])
        assert len(var_e) == VAR_ENTRY_COUNTS[args.depth], len(var_e)
    if args.depth == 16:
        assert len(var_e) == 220 and n_var == 310_283_520
    print(f"VQVAE: {len(vae_e)} entries, {n_params(vae_e):,} params; "
          f"VAR-d{args.depth}: {len(var_e)} entries, {n_var:,} params (excluding buffers)")

    os.makedirs(args.out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    vae_sd = build_state_dict(vae_e, g)
    var_sd = build_state_dict(var_e, g)
    t_init = time.time() - t0
    print(f"initialised in {t_init:.1f}s")

    outputs = []
    for stem, sd, entries in (("vae_ch160v4096z32", vae_sd, vae_e), (f"var_d{args.depth}", var_sd, var_e)):
        p_pth = os.path.join(args.out_dir, stem + ".pth")
        p_st = os.path.join(args.out_dir, stem + ".safetensors")
        if args.no_safetensors:
            t_a = time.time(); torch.save(sd, p_pth); t_pth, t_st = time.time() - t_a, 0.0
        else:
            t_pth, t_st = save_both(sd, p_pth, p_st)
        print(f"wrote {p_pth} ({os.path.getsize(p_pth):,} B, {t_pth:.1f}s)")
        outputs.append(p_pth)
        if not args.no_safetensors:
            print(f"wrote {p_st} ({os.path.getsize(p_st):,} B, {t_st:.1f}s)")
            outputs.append(p_st)
        if not args.no_verify:
            t_v = time.time()
            n = verify_file(p_pth, entries)
            msg = f"verified {p_pth}: {n} entries, keys/order/shapes/dtypes as specified"
            if not args.no_safetensors:
                verify_safetensors(p_st, sd)
                msg += "; safetensors identical"
            print(msg + f" ({time.time() - t_v:.1f}s)")

    print(f"total {time.time() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
