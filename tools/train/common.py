import argparse
import json
import math
import os
import time
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_config(path=None):
    return json.load(open(path or os.path.join(HERE, "emoji32.json")))


def load_data(npz):
    d = np.load(npz)
    return {k: d[k] for k in d.files}


def to_tensor_images(u8):
    """uint8 (N,32,32,3) -> float32 (N,3,32,32) in [-1,1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255.0).mul(2).sub(1).contiguous()


def cosine_lr(step, total, base, warmup, min_ratio):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Logger:
    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "w")
        self.t0 = time.time()

    def __call__(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def psnr_01(a, b):
    """a, b in [-1,1]; PSNR of the [0,1] images, averaged per image."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) * 0.5).square().flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item(), mse.mean().item()


def default_classifier(cfg):
    """The committed classifier (tools/train/emoji32-classifier.pt), else the training output."""
    committed = os.path.join(HERE, "emoji32-classifier.pt")
    return committed if os.path.exists(committed) else os.path.join(cfg["out_dir"], "classifier.pt")


def train_arg_parser(epoch_budget=True):
    """The options every training script starts with; `epoch_budget` adds --batch-size, --time-budget and
    --max-epochs (not the classifier's)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=None)
    if epoch_budget:
        ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    if epoch_budget:
        ap.add_argument("--time-budget", type=float, default=0.0,
                        help="seconds; if > 0, the epoch count is set from the first epoch's duration (logged, so the "
                             "run can be repeated with --epochs N)")
        ap.add_argument("--max-epochs", type=int, default=100000)
    return ap


def add_io_args(ap, log_name, inputs=()):
    """--npz, one --NAME per checkpoint in `inputs`, --out and --log (default tools/train/logs/<log_name>)."""
    ap.add_argument("--npz", default=None)
    for name in inputs:
        ap.add_argument(f"--{name}", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default=os.path.join(HERE, "logs", log_name))


def start_run(args, cfg, seed):
    """Threads, seed, device, log and data set of a training run, in this order: (device, log, data)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    dev = torch.device(args.device)
    log = Logger(args.log)
    return dev, log, load_data(args.npz or cfg["data"]["npz"])


def set_lr(opt, lr):
    for gr in opt.param_groups:
        gr["lr"] = lr


def optimizer_step(opt, loss, params=None, grad_clip=None):
    """Backward pass and one optimizer step, clipping the gradient norm of `params` to `grad_clip` if given."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


class TimeBudget:
    """--time-budget: after the second epoch (no warm-up or evaluation cost) the epoch count is set so that the
    whole run fits the budget; the new count is logged so that the run can be repeated with --epochs N."""

    def __init__(self, args, log):
        self.budget, self.max_epochs, self.log = args.time_budget, args.max_epochs, log
        self.t_ep1 = None

    def epochs_after(self, ep, epochs, t0):
        """Call at the end of epoch `ep` of a run started at `t0`; returns the (possibly new) epoch count."""
        if ep == 0:
            self.t_ep1 = time.time()
        if ep == 1 and self.budget > 0:
            t_ep = time.time() - self.t_ep1
            epochs = max(2, min(self.max_epochs, 2 + int((self.budget - (time.time() - t0)) / (1.1 * t_ep))))
            self.log(f"time budget {self.budget:.0f}s, epoch {t_ep:.2f}s -> epochs set to {epochs} "
                     f"(repeat with --epochs {epochs})")
        return epochs


def save_checked(sd, n, order, out, log, checked):
    """Writes `sd` as a plain torch.save of an OrderedDict in the key `order` check_format returned (contiguous
    copies) and logs its size; `checked` names what check_format checked."""
    sd = OrderedDict((k, sd[k].detach().clone().contiguous()) for k in order)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(sd, out)
    log(f"wrote {out} ({os.path.getsize(out):,} B, {n} entries, official {checked} checked)")
