#!/usr/bin/env python3
"""Batched images/s of the PyTorch reference sampler (official_reference.py) on a GPU (or the CPU).

The reference's `sample()` draws one class for a whole batch on the CPU; this script runs the same
model code (VARRef / VQVAERef / sample_top_k_top_p_ imported from official_reference.py, nothing
re-implemented) in a batched loop on --device, so that the CUDA backend of srdd has a baseline:

  * B images, image i of class i % num_classes (the official CFG layout: 2B rows, the B conditional
    rows first, then B rows of the null class), guidance t = cfg * si / (SN - 1) (official ramp),
    top-k 900 / top-p 0.96 sampling (official defaults) from one torch.Generator on --device.
  * --attention markov (default): every scale runs alone (block-diagonal mask, no KV cache), as
    srdd samples; causal: the official block-causal loop with its KV cache.
  * --dtype bf16 | f16: the scale loop AND the VQVAE decode run inside one torch.autocast region,
    as the official demo wraps `autoregressive_infer_cfg` (whose last line decodes). Weights stay
    float32 leaf tensors that require grad, like the official nn.Parameters, so that autocast's
    weight-cast cache casts each weight once per region instead of once per use (the loop itself
    runs under torch.no_grad). --decode-dtype f32 takes the decode out of autocast instead.
    --dtype f32: no autocast (TF32 off), the reference's numerics.

Timing: one region = the scale loop (transformer, sampling, f_hat updates) + the decode, between
torch.cuda.synchronize() calls (on a GPU); model loading and the host copy of the checkpoint are
outside it. --warmup regions first (not timed; they also compile / autotune cuBLAS), then --repeats
timed regions per batch size; the best is kept. One JSON line per batch size on stdout:

  {"engine": "torch", "batch": 16, "dtype": "bf16", "decode_dtype": "bf16", "device": "cuda",
   "seconds": [..], "best_s": .., "images_per_s": .., "transformer_s": .., "decode_s": .., ...}

Examples
  python3 tools/scripts/torch_gpu_bench.py --var /tmp/d16/var_d16.pth --vae /tmp/d16/vae_ch160v4096z32.pth \\
      --device cuda --dtype bf16 --batch 1,16,64
  python3 tools/scripts/torch_gpu_bench.py --var tests/fixtures/tiny-six-scales/var.pth \\
      --vae tests/fixtures/tiny-six-scales/vae.pth --device cpu --dtype f32 --batch 2 --check-single
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ beside the tracked scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_reference as ref  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


_SDPA = F.scaled_dot_product_attention


def _sdpa_one_dtype(query, key, value, *args, **kwargs):
    """F.scaled_dot_product_attention with q, k, v of one dtype. Under autocast, F.normalize (an
    fp32-listed op) makes the l2-normed q and k float32 while v is bf16 / f16; SDPA autocasts them
    to one dtype itself where its autocast rule exists; this wrapper makes that explicit (the
    autocast dtype), and is a no-op when the dtypes already agree."""
    if not (query.dtype == key.dtype == value.dtype):
        kind = query.device.type
        dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
        query, key, value = query.to(dt), key.to(dt), value.to(dt)
    return _SDPA(query, key, value, *args, **kwargs)


def load_models(var_path, vae_path, device):
    """VARRef / VQVAERef with every tensor on `device`; float weights become grad-requiring leaves."""
    var = ref.VARRef(ref.load_state_dict(var_path))
    vae = ref.VQVAERef(ref.load_state_dict(vae_path), var.patch_nums)

    def move(sd):
        out = {}
        for k, v in sd.items():
            v = v.to(device)
            if v.is_floating_point():
                v.requires_grad_(True)  # a leaf like nn.Parameter: autocast caches its low-precision cast
            out[k] = v
        return out

    var.sd = move(var.sd)
    var.lvl_1L = var.lvl_1L.to(device)
    vae.sd = move(vae.sd)
    return var, vae


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=True)


@torch.no_grad()
def sample_batch(var, vae, labels, cfg, seed, attention, top_k, top_p, device, dtype, decode_dtype):
    """Official autoregressive_infer_cfg (causal) or its Markovian variant for the rows `labels`.

    Returns (image (B, 3, H, W) in [0, 1], idx per scale, transformer seconds, decode seconds)."""
    B = labels.shape[0]
    sd = var.sd
    nc = var.num_classes
    schedule = var.patch_nums
    SN = len(schedule)
    rng = torch.Generator(device=device).manual_seed(seed)
    cache = {} if attention == "causal" else None
    idx_list = []
    sync(device)
    t0 = time.perf_counter()
    with autocast_for(device, dtype):
        sos = cond_BD = F.embedding(torch.cat((labels, torch.full_like(labels, nc))), sd["class_emb.weight"])
        lvl_pos = var.lvl_pos()
        first_l = schedule[0] ** 2
        next_token_map = (sos.unsqueeze(1).expand(2 * B, first_l, -1) + sd["pos_start"].expand(2 * B, first_l, -1)
                          + lvl_pos[:, :first_l])
        P = schedule[-1]
        f_hat = sos.new_zeros(B, var.Cvae, P, P)
        cond_gss = var.cond_gss(cond_BD)
        for si, pn in enumerate(schedule):
            t = cfg * si / (SN - 1)
            x = var.blocks(next_token_map, cond_gss, None, cache)
            logits_BlV = var.get_logits(x, cond_BD)
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            idx_Bl = ref.sample_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
            idx_list.append(idx_Bl)
            h_BChw = vae.embedding(idx_Bl).transpose_(1, 2).reshape(B, var.Cvae, pn, pn)
            pn_next = schedule[si + 1] if si + 1 < SN else pn
            f_hat, next_token_map = vae.next_ar_input(si, SN, f_hat, h_BChw, pn_next)
            if si != SN - 1:
                b, _ = var.begin_ends[si + 1]
                next_token_map = next_token_map.view(B, var.Cvae, -1).transpose(1, 2)
                next_token_map = var.lin("word_embed", next_token_map) + lvl_pos[:, b:b + pn_next ** 2]
                next_token_map = next_token_map.repeat(2, 1, 1)
        sync(device)
        t1 = time.perf_counter()
        if decode_dtype == dtype:
            image = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
    if decode_dtype != dtype:
        with autocast_for(device, decode_dtype):
            image = vae.fhat_to_img(f_hat.float()).add_(1).mul_(0.5)
    sync(device)
    t2 = time.perf_counter()
    return image.float(), idx_list, t1 - t0, t2 - t1


def check_single(var, vae, args, device):
    """One image of class 0 through this loop and through official_reference.sample() (CPU, f32,
    same seed): (tokens identical, image max |diff|). Only B = 1 compares token for token, since
    the rows of a batch draw from one shared generator stream."""
    label = 0
    out, _ = ref.sample(var, vae, label, cfg=args.cfg, seed=args.seed, attention=args.attention,
                        top_k=args.top_k, top_p=args.top_p)
    img, idx, _, _ = sample_batch(var, vae, torch.tensor([label], device=device), args.cfg, args.seed,
                                  args.attention, args.top_k, args.top_p, device, torch.float32, torch.float32)
    same = all(torch.equal(idx[si].cpu(), out[f"idx_{si}"].cpu()) for si in range(len(idx)))
    diff = float((img.cpu() - out["image"].cpu()).abs().max())
    return same, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var", required=True, help="VAR checkpoint in the official format (.pth / .safetensors)")
    ap.add_argument("--vae", required=True, help="VQVAE checkpoint in the official format")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype of the scale loop")
    ap.add_argument("--decode-dtype", choices=["same", "f32"], default="same",
                    help="same: decode inside the loop's autocast region (official); f32: without autocast")
    ap.add_argument("--batch", default="1", help="comma list of batch sizes, e.g. 1,16,64")
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.96)
    ap.add_argument("--attention", choices=["markov", "causal"], default="markov")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed regions per batch size")
    ap.add_argument("--repeats", type=int, default=2, help="timed regions per batch size (the best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--check-single", action="store_true",
                    help="first check that batch 1 in f32 draws the tokens official_reference.sample() draws "
                         "(CPU only: the GPU generator differs)")
    args = ap.parse_args()
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        ap.error(f"--batch {args.batch!r}: expected a comma list of integers")
    if any(b < 1 for b in batches) or args.repeats < 1 or args.warmup < 0:
        ap.error("--batch values and --repeats must be at least 1, --warmup at least 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_gpu_bench: CUDA is not available to torch", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = DTYPES[args.dtype]
    ref.F.scaled_dot_product_attention = _sdpa_one_dtype  # official_reference's F is torch's
    decode_dtype = dtype if args.decode_dtype == "same" else torch.float32
    t_load = time.perf_counter()
    var, vae = load_models(args.var, args.vae, device)
    sync(device)
    t_load = time.perf_counter() - t_load
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {gpu}; VAR {var.config()}; load {t_load:.2f} s", file=sys.stderr, flush=True)
    if args.check_single:
        if device.type != "cpu":
            ap.error("--check-single needs --device cpu")
        same, diff = check_single(var, vae, args, device)
        print(f"check-single: tokens {'identical' if same else 'DIFFER'}, image max |diff| {diff:.3g}",
              file=sys.stderr, flush=True)
        if not same or diff > 1e-5:
            return 1
    for B in batches:
        labels = torch.arange(B, device=device) % var.num_classes
        run = lambda: sample_batch(var, vae, labels, args.cfg, args.seed, args.attention, args.top_k,  # noqa: E731
                                   args.top_p, device, dtype, decode_dtype)
        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.repeats):
            img, _, t_tr, t_dec = run()
            times.append((t_tr + t_dec, t_tr, t_dec))
        best = min(times)
        rec = {"engine": "torch", "torch": torch.__version__, "device": gpu, "batch": B, "dtype": args.dtype,
               "decode_dtype": args.dtype if decode_dtype == dtype else "f32", "attention": args.attention,
               "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "image_side": int(img.shape[-1]),
               "seconds": [round(t[0], 5) for t in times], "best_s": round(best[0], 5),
               "transformer_s": round(best[1], 5), "decode_s": round(best[2], 5),
               "images_per_s": round(B / best[0], 4), "load_s": round(t_load, 3),
               "image_mean": round(float(img.mean()), 4)}
        if device.type == "cuda":
            rec["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
