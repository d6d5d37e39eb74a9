#!/usr/bin/env python3
"""Parity fixture for the trained emoji32 SRDD model, in the schema of tests/fixtures/tiny-six-scales.

Reference tensors are computed with THIS directory's training model code (tools/train/models.py; eval mode,
float32, CPU, 2 threads), then the whole fixture is re-run with tools/scripts/official_reference.py
verify-fixture (the independent re-implementation of the official inference code) and the result is recorded in
the manifest. Cases: tokenize (the held-out image with the largest minimum VQ distance gap), decode (gt f_hat of a second held-out image),
teacher_forced (markov with the image's class, causal with the null class), greedy sample markov cfg 3 (and
causal cfg 3), linear cfg schedule, top_k 1. Only two teacher-forced logits tensors (1,155,512) are stored so that
reference.safetensors stays under 1 MB.

Usage: python tools/train/make_fixture.py [--out /work/scratch/emoji/fixture]
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
from common import load_config, load_data, to_tensor_images  # noqa: E402
from eval_tokens import build_vae, build_var  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}


def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


@torch.no_grad()
def vq_gaps(vae, f):
    """Per scale: min over positions of (second-best - best) squared distance, following f_to_idxBl."""
    q = vae.quantize
    B, C, H, W = f.shape
    f_rest = f.clone()
    SN = len(q.v_patch_nums)
    gaps = []
    for si, pn in enumerate(q.v_patch_nums):
        d = q.code_distances(q.rest_NC(f_rest, si))
        two = d.topk(2, dim=1, largest=False)[0]
        gaps.append(float((two[:, 1] - two[:, 0]).min()))
        idx = d.argmin(1).view(B, pn, pn)
        h = (F.interpolate(q.embedding(idx).permute(0, 3, 1, 2), size=(H, W), mode="bicubic")
             if si != SN - 1 else q.embedding(idx).permute(0, 3, 1, 2))
        f_rest.sub_(q.quant_resi[si / (SN - 1)](h))
    return gaps


def min_gaps(out, SN):
    res = []
    for si in range(SN):
        t = out[f"logits_{si}"].topk(2, dim=-1)[0]
        res.append(float((t[..., 0] - t[..., 1]).min()))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--vae", default="/work/scratch/emoji/vae.pth")
    ap.add_argument("--var", default="/work/scratch/emoji/var.pth")
    ap.add_argument("--npz", default=None)
    ap.add_argument("--out", default="/work/scratch/emoji/fixture")
    ap.add_argument("--cfg", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config)
    d = load_data(args.npz or cfg["data"]["npz"])
    names = [str(s) for s in d["class_names"]]
    K = len(names)
    vae = build_vae(cfg)
    vae.load_state_dict(torch.load(args.vae, weights_only=True))
    vae.eval()
    var = build_var(cfg, K)
    var.load_state_dict(torch.load(args.var, weights_only=True))
    var.eval()
    pn = var.patch_nums
    SN = len(pn)
    ho = np.flatnonzero(d["split"] == 1)
    R = OrderedDict()
    desc = {}
    diag = {}

    with torch.no_grad():
        # ---- tokenize: the held-out image whose smallest VQ decision gap (second-best minus best squared
        # distance, over all scales and positions) is largest, so that float32 re-implementations agree on tokens
        best = None
        for i in ho:
            xi = to_tensor_images(d["images"][i:i + 1])
            g = vq_gaps(vae, vae.img_to_f(xi))
            if best is None or min(g) > min(best[2]):
                best = (int(i), xi, g)
        pick = best
        i_img, x, gaps = pick
        lab = int(d["labels"][i_img])
        f = vae.img_to_f(x)
        idx = vae.quantize.f_to_idxBl(f)
        fhat = vae.quantize.idxBl_to_fhat(idx)
        R["input_image"] = x
        desc["input_image"] = (f"held-out emoji32 image #{i_img} ({d['unified'][i_img]}, class {lab} {names[lab]}): "
                               "uint8 RGB (alpha over white, 64->32 area) /255*2-1, float32, range [-1,1]")
        R["enc_f"] = f
        desc["enc_f"] = "vae.quant_conv(vae.encoder(input_image))"
        for si in range(SN):
            R[f"gt_idx_{si}"] = idx[si]
            desc[f"gt_idx_{si}"] = f"img_to_idxBl(input_image)[{si}]: scale {si} (pn={pn[si]}), row-major tokens"
        R["gt_fhat"] = fhat
        desc["gt_fhat"] = "embed_to_fhat(all_to_max_scale=True) of the gt tokens"
        R["recon_image"] = vae.fhat_to_img(fhat)
        desc["recon_image"] = "clamp(decoder(post_quant_conv(gt_fhat)), -1, 1)"
        diag["tokenize_image_index"] = i_img
        diag["vq_min_distance_gap_per_scale"] = gaps
        enc_side = None
        # ---- decode: gt f_hat of another held-out image (a flag if possible)
        j = next(i for i in ho if int(d["labels"][i]) == K - 1)
        fj = vae.quantize.idxBl_to_fhat(vae.quantize.f_to_idxBl(vae.img_to_f(to_tensor_images(d["images"][j:j + 1]))))
        R["decode_fhat_in"] = fj
        desc["decode_fhat_in"] = f"gt f_hat of held-out image #{int(j)} ({d['unified'][j]}, class {int(d['labels'][j])})"
        raw = vae.decoder(vae.post_quant_conv(fj))
        R["decode_out"] = raw.clamp(-1, 1)
        R["decode_out_raw"] = raw
        desc["decode_out"] = "clamp(decoder(post_quant_conv(decode_fhat_in)), -1, 1)"
        desc["decode_out_raw"] = "decoder(post_quant_conv(decode_fhat_in)) before the clamp"
        diag["decode_out_raw_fraction_clamped"] = float((raw.abs() > 1).float().mean())
        # ---- teacher forcing (training model code, cond_drop_rate = 0)
        vin = vae.quantize.idxBl_to_var_input(idx)
        R["var_input"] = vin
        desc["var_input"] = "idxBl_to_var_input(gt tokens): (1, L-1, Cvae)"
        R["logits_markov"] = var(torch.tensor([lab]), vin, var.attn_mask("markov"), cond_drop=0.0)
        desc["logits_markov"] = f"VAR.forward(label={lab}, var_input) with the block-diagonal (Markovian) mask, cond_drop 0"
        R["logits_causal_null"] = var(torch.tensor([K]), vin, var.attn_mask("causal"), cond_drop=0.0)
        desc["logits_causal_null"] = f"VAR.forward(label={K} = null, var_input) with the official block-causal mask"
        tok = torch.cat(idx, 1)
        diag["teacher_forcing_ce"] = {
            k: float(F.cross_entropy(R[k][0], tok[0])) for k in ("logits_markov", "logits_causal_null")}
        # ---- greedy sampling: first class whose markov and causal greedy runs have every gap > 1e-3
        runs = {}
        for s_lab in list(range(K)):
            om = var.sample_markov(vae, s_lab, cfg=args.cfg, top_k=1, seed=0, return_all=True, attention="markov")
            oc = var.sample_markov(vae, s_lab, cfg=args.cfg, top_k=1, seed=0, return_all=True, attention="causal")
            gm, gc = min_gaps(om, SN), min_gaps(oc, SN)
            if min(gm) > 1e-3 and min(gc) > 1e-3:
                runs = {"markov": (om, gm), "causal": (oc, gc)}
                break
        sample_label = s_lab
        cases_sample = []
        diag["greedy_runs"] = {}
        for att, (o, g) in runs.items():
            run = f"{att}_cfg{args.cfg:g}"
            for si in range(SN):
                R[f"{run}_idx_{si}"] = o[f"idx_{si}"]
                desc[f"{run}_idx_{si}"] = f"greedy {att} run, label {sample_label}, cfg {args.cfg:g}: tokens of scale {si}"
            for si in range(SN):
                R[f"{run}_fhat_{si}"] = o[f"fhat_{si}"]
                desc[f"{run}_fhat_{si}"] = f"f_hat after scale {si}"
            R[f"{run}_image"] = o["image"]
            desc[f"{run}_image"] = "(clamp(decoder(post_quant_conv(f_hat)),-1,1)+1)/2 in [0,1]"
            diag["greedy_runs"][run] = {"min_top1_top2_gap": [round(v, 5) for v in g],
                                        "unique_tokens": [int(o[f"idx_{si}"].unique().numel()) for si in range(SN)]}
            cases_sample.append({"kind": "sample", "top_k": 1, "top_p": 0.0, "seed": 0, "cfg_schedule": "linear",
                                 "schedule": "full", "id": run, "attention": att, "label": sample_label,
                                 "cfg": args.cfg,
                                 "expect": [{"key": f"{run}_idx_{{si}}", "exact": True},
                                            {"key": f"{run}_fhat_{{si}}", **TOL},
                                            {"key": f"{run}_image", **TOL}]})

    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file
    R = OrderedDict((k, v.detach().contiguous()) for k, v in R.items())
    ref_path = os.path.join(args.out, "reference.safetensors")
    save_file(R, ref_path, metadata={"format": "pt"})
    shutil.copyfile(args.vae, os.path.join(args.out, "vae.pth"))
    shutil.copyfile(args.var, os.path.join(args.out, "var.pth"))

    tiny = json.load(open(os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-six-scales", "manifest.json")))
    cases = [
        {"id": "tokenize", "kind": "tokenize", "input": "input_image",
         "expect": [{"key": "enc_f", **TOL}, {"key": "gt_idx_{si}", "exact": True}, {"key": "gt_fhat", **TOL},
                    {"key": "recon_image", **TOL}]},
        {"id": "decode", "kind": "decode", "input": "decode_fhat_in", "expect": [{"key": "decode_out", **TOL}]},
        {"id": "teacher_markov", "kind": "teacher_forced", "attention": "markov", "label": lab,
         "tokens": "gt_idx_{si}", "expect": [{"key": "logits_markov", **TOL}]},
        {"id": "teacher_causal_null", "kind": "teacher_forced", "attention": "causal", "label": K,
         "tokens": "gt_idx_{si}", "expect": [{"key": "logits_causal_null", **TOL}]},
    ] + cases_sample
    c = cfg["vqvae"]
    v = cfg["var"]
    ticks = vae.quantize.quant_resi.ticks.tolist()
    man = OrderedDict()
    man["name"] = "emoji32-srdd"
    man["purpose"] = ("parity fixture of the trained emoji32 SRDD (Markovian VAR) model: outputs of tools/train/models.py "
                      "(the training code; CPU, float32, eval) cross-checked with tools/scripts/official_reference.py "
                      "verify-fixture (independent re-implementation of the official inference code)")
    man["source"] = {"model_code": "tools/train/models.py", "generator": "tools/train/make_fixture.py",
                     "weights": {"vae": args.vae, "var": args.var},
                     "data": f"emoji-datasource-google {cfg['data']['npm_version']} (npm), held-out split"}
    man["torch_version"] = torch.__version__
    man["numpy_version"] = np.__version__
    man["python"] = platform.python_version()
    man["torch_threads"] = 2
    man["device"] = "cpu"
    man["dtype"] = "float32"
    man["seed"] = {"g_seed": 0}
    man["config"] = {
        "vqvae": {"V": c["V"], "Cvae": c["Cvae"], "ch": c["ch"], "ch_mult": c["ch_mult"],
                  "num_res_blocks": c["num_res_blocks"], "decoder_res_blocks_per_level": c["num_res_blocks"] + 1,
                  "using_sa": c["using_sa"], "using_mid_sa": c["using_mid_sa"], "share_quant_resi": c["share_quant_resi"],
                  "quant_resi": c["quant_resi"], "quant_conv_ks": c["quant_conv_ks"], "dropout": 0.0,
                  "using_znorm": False, "beta": c["beta"], "groupnorm_groups": 32, "groupnorm_eps": 1e-6,
                  "downsample": 4, "image_size": 32, "latent_size": 8, "test_mode": True},
        "var": {"depth": v["depth"], "embed_dim": v["embed_dim"], "num_heads": v["num_heads"],
                "head_dim": v["embed_dim"] // v["num_heads"], "mlp_ratio": v["mlp_ratio"],
                "ffn_hidden": round(v["embed_dim"] * v["mlp_ratio"]), "norm_eps": v["norm_eps"],
                "shared_aln": False, "attn_l2_norm": True, "num_classes": K, "null_class": K,
                "class_names": names, "cond_drop_rate_at_training": v["cond_drop_rate"],
                "cond_drop_rate_used_for_forward": 0.0, "drop_rate": 0.0, "attn_drop_rate": 0.0,
                "drop_path_rate": 0.0, "mode": "eval", "trained_attention": "markov"},
        "patch_nums": list(pn), "L": var.L, "begin_ends": [list(be) for be in var.begin_ends],
        "phi_ticks": ticks, "phi_index_per_scale": [vae.quantize.phi_index(si) for si in range(SN)],
        "label": lab, "sample_label": sample_label,
    }
    conv = dict(tiny["conventions"])
    conv.pop("edit", None)
    man["conventions"] = conv
    man["tensors"] = [{"key": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                       "description": desc.get(k, "")} for k, t in R.items()]
    man["diagnostics"] = diag
    man["files"] = {fn: {"bytes": os.path.getsize(os.path.join(args.out, fn)), "sha256": sha256(os.path.join(args.out, fn))}
                    for fn in ("vae.pth", "var.pth", "reference.safetensors")}
    man["state_dict_keys"] = {"vae": len(vae.state_dict()), "var": len(var.state_dict())}
    man["schema_version"] = tiny["schema_version"]
    man["cases_doc"] = tiny["cases_doc"]
    man["cases"] = cases
    mpath = os.path.join(args.out, "manifest.json")
    json.dump(man, open(mpath, "w"), indent=1)

    # ---- cross-check with the independent reference (official inference re-implementation)
    import official_reference as ref
    ok, report = ref.verify_fixture(args.out, threads=2, verbose=True)
    fmax = max([r[3] for r in report if isinstance(r[3], float)] + [0.0])
    man["verification"] = {"official_reference_verify_fixture": {"passed": bool(ok), "tensors_checked": len(report),
                                                                 "failed": sum(1 for r in report if r[2] != "ok"),
                                                                 "max_abs_diff_float": fmax}}
    json.dump(man, open(mpath, "w"), indent=1)
    print(f"wrote {args.out}: reference.safetensors {os.path.getsize(ref_path):,} B, {len(R)} tensors; "
          f"tokenize image #{i_img} class {lab}; sample label {sample_label}; verify-fixture "
          f"{'PASSED' if ok else 'FAILED'} (max float diff {fmax:.3g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
