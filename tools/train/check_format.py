"""Assert that trained state_dicts have exactly the official keys / shapes / dtypes (and official buffer values).

Reuses the key listing of tools/scripts/make_random_official.py: vqvae_entries() as is; for VAR the listing of
var_entries() generalised to width C and H heads (make_random_official hard-codes C = 64*depth, H = depth).
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import make_random_official as mro  # noqa: E402


def var_entries(depth, C, H, V, z, num_classes, patch_nums, mlp_ratio=4.0):
    """mro.var_entries with C and H free: built by calling it at depth d and substituting the sizes."""
    ref = mro.var_entries(depth=depth, V=V, z=z, num_classes=num_classes, patch_nums=patch_nums, mlp_ratio=mlp_ratio)
    C0, H0, hid0 = 64 * depth, depth, round(64 * depth * mlp_ratio)
    hid = round(C * mlp_ratio)
    sub = {C0: C, 3 * C0: 3 * C, hid0: hid, 6 * C0: 6 * C, 2 * C0: 2 * C}
    out = []
    for name, shape, kind in ref:
        if name.endswith("scale_mul_1H11"):
            shape = (1, H, 1, 1)
        elif name in ("lvl_1L", "attn_bias_for_masking", "class_emb.weight", "lvl_embed.weight", "head.bias"):
            shape = tuple(C if (name != "lvl_1L" and i == len(shape) - 1 and name in ("class_emb.weight", "lvl_embed.weight")) else s
                          for i, s in enumerate(shape))
        elif name in ("word_embed.weight",):
            shape = (C, z)
        elif name == "head.weight":
            shape = (V, C)
        else:
            shape = tuple(sub.get(s, s) for s in shape)
        out.append((name, shape, kind))
    return out


def check_sd(sd, entries, what):
    names = [n for n, _, _ in entries]
    assert set(sd.keys()) == set(names), f"{what}: keys differ: missing {set(names) - set(sd)}, extra {set(sd) - set(names)}"
    assert len(sd) == len(names)
    for name, shape, kind in entries:
        t = sd[name]
        want = torch.int64 if kind == "lvl_1L" else torch.float32
        assert tuple(t.shape) == tuple(shape), (what, name, tuple(t.shape), shape)
        assert t.dtype == want, (what, name, t.dtype)
    return len(sd)


def check_vae(sd, V, z, ch, ch_mult, num_res_blocks, n_phi, n_scales):
    e = mro.vqvae_entries(V=V, z=z, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, n_phi=n_phi,
                          n_scales=n_scales)
    n = check_sd(sd, e, "vae")
    return n, [k for k, _, _ in e]


def check_var(sd, depth, C, H, V, z, num_classes, patch_nums):
    e = var_entries(depth, C, H, V, z, num_classes, tuple(patch_nums))
    n = check_sd(sd, e, "var")
    lvl = mro.level_ids(tuple(patch_nums)).view(1, -1)
    assert torch.equal(sd["lvl_1L"], lvl)
    bias = mro.init_tensor("attn_bias_for_masking", sd["attn_bias_for_masking"].shape, "attn_bias", None,
                           patch_nums=tuple(patch_nums))
    assert torch.equal(sd["attn_bias_for_masking"], bias), "attn_bias_for_masking is not the official block-causal mask"
    for i in range(depth):
        assert torch.count_nonzero(sd[f"blocks.{i}.attn.zero_k_bias"]) == 0
    return n, [k for k, _, _ in e]
