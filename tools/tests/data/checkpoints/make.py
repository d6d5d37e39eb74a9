"""Generates the small .pth fixtures used by tools/tests/checkpoint.rs.

Run with a Python that has PyTorch (and numpy):

    python tools/tests/data/checkpoints/make.py

Writes, next to this script:
  nested.pth      official-style training checkpoint
                  {'epoch', 'iter', 'trainer': {'config', 'var_wo_ddp', 'vae_local', 'var_opt'}, 'args'}
                  where 'args' is an instance of a class defined here (pickled by reference)
  prefixed.pth    the VAR state dict with torch.compile's `_orig_mod.` prefix on every key
  wrapped.pth     {'state_dict': <VAE state dict with DDP `module.` prefixes>, 'epoch': 1, ...}
  views.pth       non-contiguous / offset / shared-storage / f16 / bf16 / integer / bool / 0-d / empty tensors
  views_p4.pth    the same dict saved with pickle protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE, ...)
  duplicate.pth   keys 'w' and 'module.w' (collide after prefix stripping)
  legacy.pth      the legacy (non-zip) torch.save format, which the reader rejects
  expected.json   for each file: the expected keys (in order), dtypes, shapes and values
"""

import argparse
import collections
import json
import os

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(1234)


class Args:
    """Stands in for the official training `Args` class: torch.save pickles it by reference."""


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.randn(c))
        self.proj = nn.Linear(c, c)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)
        self.attn = Attn(c)


class TinyVar(nn.Module):
    def __init__(self, c=4, v=5):
        super().__init__()
        self.pos_start = nn.Parameter(torch.randn(1, 1, c))
        self.word_embed = nn.Linear(3, c)
        self.class_emb = nn.Embedding(v, c)
        self.blocks = nn.ModuleList([Block(c)])
        self.register_buffer("lvl_1L", torch.tensor([[0, 1, 1, 2, 2, 2]], dtype=torch.int64))
        self.head = nn.Linear(c, v)


class TinyVae(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(2, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        self.embedding = nn.Embedding(6, 3)


DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "Bool",
}


def describe(sd):
    """Expected reader output: keys in order, dtype, shape, row-major values."""
    out = []
    for k, t in sd.items():
        t = t.detach()
        if t.dtype.is_floating_point:
            # Floats as repr() strings: exact (shortest round-trip) and JSON-safe for inf/nan.
            values = [repr(v) for v in t.to(torch.float64).flatten().tolist()]
        else:
            values = t.to(torch.int64).flatten().tolist()
        out.append({"key": k, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "values": values})
    return out


def save(obj, name, **kw):
    path = os.path.join(HERE, name)
    torch.save(obj, path, **kw)
    print(f"{name}: {os.path.getsize(path)} bytes")


def main():
    expected = {}

    var, vae = TinyVar(), TinyVae()
    with torch.no_grad():
        vae.norm.running_mean.uniform_(-1, 1)
        vae.norm.running_var.uniform_(0.5, 2)
        vae.norm.num_batches_tracked.fill_(7)
    sd_var, sd_vae = var.state_dict(), vae.state_dict()

    # An optimizer with real state (step/exp_avg/exp_avg_sq tensors, int keys, param_groups).
    opt = torch.optim.AdamW(var.parameters(), lr=1e-3, betas=(0.9, 0.95))
    var.head(var.word_embed(torch.randn(2, 3))).square().sum().backward()
    opt.step()

    args = Args()
    args.depth = 16
    args.tlr = 1e-4
    args.patch_nums = (1, 2, 3)
    args.tags = {"a", "b"}
    args.frozen = frozenset([1])
    args.dtype = torch.float16
    args.device = torch.device("cpu")
    args.np_scalar = np.float32(0.5)
    args.np_array = np.arange(3)
    args.ns = argparse.Namespace(x=1, y="z")
    args.big = 2**70
    args.sl = slice(1, 2)
    nested = {
        "epoch": 3,
        "iter": 10,
        "trainer": {
            "config": {"patch_nums": (1, 2, 3), "label_smooth": 0.1, "name": "tiny"},
            "var_wo_ddp": sd_var,
            "vae_local": sd_vae,
            "var_opt": {"optimizer": opt.state_dict(), "scaler": None},
        },
        "args": args,
    }
    save(nested, "nested.pth")
    expected["nested.pth:var"] = describe(sd_var)
    expected["nested.pth:vae"] = describe(sd_vae)

    save(collections.OrderedDict(("_orig_mod." + k, v) for k, v in sd_var.items()), "prefixed.pth")
    expected["prefixed.pth"] = describe(sd_var)

    wrapped = {
        "state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd_vae.items()),
        "epoch": 1,
        "best_loss": 0.25,
    }
    save(wrapped, "wrapped.pth")
    expected["wrapped.pth"] = describe(sd_vae)

    base = torch.arange(20, dtype=torch.float32)
    views = collections.OrderedDict()
    views["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    views["channels_last"] = torch.randn(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    views["column_slice"] = torch.arange(24, dtype=torch.float32).reshape(4, 6)[:, 1:4]
    views["shared_a"] = base[2:8].view(2, 3)
    views["shared_b"] = base[10:20:2]
    views["shared_whole"] = base
    views["expanded"] = torch.tensor([1.5, -2.0]).expand(3, 2)
    views["half"] = torch.tensor([0.5, -1.25, 65504.0, 6e-8, float("-inf")], dtype=torch.float16)
    views["bfloat"] = torch.tensor([1.0, -2.5, 3.0e38, 1e-40], dtype=torch.bfloat16)
    views["half_t"] = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()
    views["double"] = torch.tensor([1.0 / 3.0, -1e300], dtype=torch.float64)
    views["long"] = torch.tensor([-(2**40), 0, 2**62], dtype=torch.int64)
    views["int"] = torch.tensor([[-7, 8], [9, -(2**31)]], dtype=torch.int32)
    views["short"] = torch.tensor([-300, 300], dtype=torch.int16)
    views["char"] = torch.tensor([-128, 127], dtype=torch.int8)
    views["byte"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    views["bool"] = torch.tensor([True, False, True])
    views["scalar"] = torch.tensor(3.5)
    views["empty"] = torch.zeros(0, 3)
    views["param"] = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    assert not views["transposed"].is_contiguous() and not views["column_slice"].is_contiguous()
    assert views["shared_a"].untyped_storage().data_ptr() == views["shared_b"].untyped_storage().data_ptr()
    save(views, "views.pth")
    save(views, "views_p4.pth", pickle_protocol=4)
    expected["views.pth"] = describe(views)
    expected["views_p4.pth"] = describe(views)

    save(collections.OrderedDict([("w", torch.ones(1)), ("module.w", torch.zeros(1))]), "duplicate.pth")
    save({"w": torch.ones(2)}, "legacy.pth", _use_new_zipfile_serialization=False)

    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=0)
        f.write("\n")
    print(f"expected.json: {os.path.getsize(os.path.join(HERE, 'expected.json'))} bytes")


if __name__ == "__main__":
    main()
