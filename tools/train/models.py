"""PyTorch modules for training emoji32 VQVAE / VAR(SRDD) models whose state_dicts have exactly the official
FoundationVision/VAR key names, shapes and dtypes (see shared/reference/VAR_SPEC.md sections 2, 3, 5).

Written from VAR_SPEC.md (no official code imported): Encoder / Decoder (basic_vae.py), VectorQuantizer2 with
partially shared Phi (quant.py), VAR with AdaLN self-attention blocks (var.py, basic_var.py). Training-only
additions (dead-code restart) live outside the state_dict.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ======================================================================================================
# VQVAE
# ======================================================================================================

def Normalize(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = Normalize(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.C = c
        self.norm = Normalize(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, 1, 0)
        self.proj_out = nn.Conv2d(c, c, 1, 1, 0)

    def forward(self, x):
        qkv = self.qkv(self.norm(x))
        B, _, H, W = qkv.shape
        C = self.C
        q, k, v = qkv.reshape(B, 3, C, H, W).unbind(1)
        q = q.view(B, C, H * W).permute(0, 2, 1).contiguous()
        k = k.view(B, C, H * W).contiguous()
        w = torch.bmm(q, k).mul_(int(C) ** (-0.5))
        w = F.softmax(w, dim=2)
        v = v.view(B, C, H * W).contiguous()
        w = w.permute(0, 2, 1).contiguous()
        h = torch.bmm(v, w).view(B, C, H, W).contiguous()
        return x + self.proj_out(h)


def resolution_level(block_in, block_out, num_blocks, using_sa):
    """One level of the Encoder / Decoder: `num_blocks` ResnetBlocks, each followed by an AttnBlock when
    `using_sa` (official: the lowest resolution only). Modules are created in the official order (the
    initialisation draws depend on it); the caller adds the down/upsample."""
    level = nn.Module()
    level.block = nn.ModuleList()
    level.attn = nn.ModuleList()
    for _ in range(num_blocks):
        level.block.append(ResnetBlock(block_in, block_out))
        block_in = block_out
        if using_sa:
            level.attn.append(AttnBlock(block_in))
    return level


def mid_blocks(c, using_mid_sa):
    """The middle of the Encoder / Decoder: ResnetBlock, AttnBlock (or identity), ResnetBlock."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c)
    mid.attn_1 = AttnBlock(c) if using_mid_sa else nn.Identity()
    mid.block_2 = ResnetBlock(c, c)
    return mid


def run_level(level, h):
    for i_block in range(len(level.block)):
        h = level.block[i_block](h)
        if len(level.attn) > 0:
            h = level.attn[i_block](h)
    return h


class Encoder(nn.Module):
    def __init__(self, ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, in_channels=3, z_channels=16,
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block_out = ch * ch_mult[i_level]
            down = resolution_level(ch * in_ch_mult[i_level], block_out, num_res_blocks,
                                    i_level == self.num_resolutions - 1 and using_sa)
            block_in = block_out
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = mid_blocks(block_in, using_mid_sa)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i_level in range(self.num_resolutions):
            h = run_level(self.down[i_level], h)
            if i_level != self.num_resolutions - 1:
                h = self.down[i_level].downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, z_channels=16, out_ch=3,
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = mid_blocks(block_in, using_mid_sa)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[i_level]
            up = resolution_level(block_in, block_out, num_res_blocks + 1,
                                  i_level == self.num_resolutions - 1 and using_sa)
            block_in = block_out
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            h = run_level(self.up[i_level], h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    def __init__(self, embed_dim, quant_resi):
        super().__init__(embed_dim, embed_dim, 3, 1, 1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h):
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls):
        super().__init__()
        self.qresi_ls = qresi_ls
        K = len(qresi_ls)
        # official: np.linspace in float64, argmin picks the first index on ties
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def index(self, at_0_1):
        return int(np.argmin(np.abs(self.ticks - at_0_1)).item())

    def __getitem__(self, at_0_1):
        return self.qresi_ls[self.index(at_0_1)]


class VectorQuantizer2(nn.Module):
    def __init__(self, vocab_size, Cvae, beta=0.25, v_patch_nums=(1, 2, 3, 4, 5, 6, 8), quant_resi=0.5,
                 share_quant_resi=4):
        super().__init__()
        self.vocab_size, self.Cvae, self.beta = vocab_size, Cvae, beta
        self.v_patch_nums = tuple(v_patch_nums)
        self.quant_resi = PhiPartiallyShared(nn.ModuleList([Phi(Cvae, quant_resi) for _ in range(share_quant_resi)]))
        self.register_buffer("ema_vocab_hit_SV", torch.full((len(self.v_patch_nums), vocab_size), fill_value=0.0))
        self.record_hit = 0
        self.embedding = nn.Embedding(vocab_size, Cvae)
        # training-only bookkeeping for dead-code restarts (not in the state_dict)
        self.restart_pool = None
        self.hits_window = torch.zeros(vocab_size)

    def phi_index(self, si):
        SN = len(self.v_patch_nums)
        return self.quant_resi.index(si / (SN - 1))

    def rest_NC(self, f_rest, si):
        """The residual at scale si as rows (B*pn*pn, C): area-downsampled, the last scale as it is."""
        pn, C = self.v_patch_nums[si], f_rest.shape[1]
        if si != len(self.v_patch_nums) - 1:
            return F.interpolate(f_rest, size=(pn, pn), mode="area").permute(0, 2, 3, 1).reshape(-1, C)
        return f_rest.permute(0, 2, 3, 1).reshape(-1, C)

    def code_distances(self, rest_NC):
        """Squared distances (N, V) of the rows to every code, in the official order of operations (no
        gradient into the codebook)."""
        E = self.embedding.weight.data
        d = torch.sum(rest_NC.square(), dim=1, keepdim=True) + torch.sum(E.square(), dim=1, keepdim=False)
        d.addmm_(rest_NC, E.T, alpha=-2, beta=1)
        return d

    def scale_update(self, idx_N, si, B, H, W):
        """Phi of the codes idx_N (B*pn*pn,) of scale si, bicubic-upsampled to (H, W) but for the last scale."""
        pn = self.v_patch_nums[si]
        SN = len(self.v_patch_nums)
        idx_Bhw = idx_N.view(B, pn, pn)
        h_BChw = (F.interpolate(self.embedding(idx_Bhw).permute(0, 3, 1, 2), size=(H, W), mode="bicubic").contiguous()
                  if si != SN - 1 else self.embedding(idx_Bhw).permute(0, 3, 1, 2).contiguous())
        return self.quant_resi[si / (SN - 1)](h_BChw)

    def forward(self, f_BChw, collect=False):
        """Official VectorQuantizer2.forward: multi-scale residual quantization, VQ loss (commitment beta +
        codebook), straight-through output. Returns f_hat, mean_vq_loss, per-scale usage (fraction of V hit)."""
        f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        mean_vq_loss = 0.0
        SN = len(self.v_patch_nums)
        hits = []
        pool = []
        for si, pn in enumerate(self.v_patch_nums):
            rest_NC = self.rest_NC(f_rest, si)
            idx_N = torch.argmin(self.code_distances(rest_NC), dim=1)
            hit_V = idx_N.bincount(minlength=self.vocab_size).float()
            hits.append(hit_V)
            if collect:
                pool.append(rest_NC[torch.randint(0, rest_NC.shape[0], (min(256, rest_NC.shape[0]),), device=rest_NC.device)])
            if self.training:
                if self.record_hit == 0:
                    self.ema_vocab_hit_SV[si].copy_(hit_V)
                elif self.record_hit < 100:
                    self.ema_vocab_hit_SV[si].mul_(0.9).add_(hit_V.mul(0.1))
                else:
                    self.ema_vocab_hit_SV[si].mul_(0.99).add_(hit_V.mul(0.01))
            h_BChw = self.scale_update(idx_N, si, B, H, W)
            f_hat = f_hat + h_BChw
            f_rest -= h_BChw
            mean_vq_loss += F.mse_loss(f_hat.data, f_BChw).mul_(self.beta) + F.mse_loss(f_hat, f_no_grad)
        if self.training:
            self.record_hit += 1
        mean_vq_loss *= 1.0 / SN
        f_hat = (f_hat.data - f_no_grad).add_(f_BChw)
        if collect:
            self.restart_pool = torch.cat(pool).detach()
        return f_hat, mean_vq_loss, torch.stack(hits)

    # ---- inference helpers (official f_to_idxBl_or_fhat, embed_to_fhat, idxBl_to_var_input) ----
    @torch.no_grad()
    def f_to_idxBl(self, f_BChw):
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().float().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        for si, pn in enumerate(self.v_patch_nums):
            idx_N = torch.argmin(self.code_distances(self.rest_NC(f_rest, si)), dim=1)
            h = self.scale_update(idx_N, si, B, H, W)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(idx_N.reshape(B, pn * pn))
        return out

    @torch.no_grad()
    def idxBl_to_fhat(self, idx_Bl):
        B = idx_Bl[0].shape[0]
        P = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = torch.zeros(B, self.Cvae, P, P, dtype=torch.float32, device=idx_Bl[0].device)
        for si, pn in enumerate(self.v_patch_nums):
            h = self.embedding(idx_Bl[si]).transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            if si < SN - 1:
                h = F.interpolate(h, size=(P, P), mode="bicubic")
            f_hat.add_(self.quant_resi[si / (SN - 1)](h))
        return f_hat

    @torch.no_grad()
    def idxBl_to_var_input(self, gt_ms_idx_Bl):
        next_scales = []
        B = gt_ms_idx_Bl[0].shape[0]
        C = self.Cvae
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, C, H, W, dtype=torch.float32)
        pn_next = self.v_patch_nums[0]
        for si in range(SN - 1):
            h_BChw = F.interpolate(self.embedding(gt_ms_idx_Bl[si]).transpose_(1, 2).view(B, C, pn_next, pn_next),
                                   size=(H, W), mode="bicubic")
            f_hat.add_(self.quant_resi[si / (SN - 1)](h_BChw))
            pn_next = self.v_patch_nums[si + 1]
            next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1) if len(next_scales) else None


class VQVAE(nn.Module):
    def __init__(self, vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, beta=0.25,
                 quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, v_patch_nums=(1, 2, 3, 4, 5, 6, 8),
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        self.V, self.Cvae = vocab_size, z_channels
        dd = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels, using_sa=using_sa,
                  using_mid_sa=using_mid_sa)
        self.encoder = Encoder(in_channels=3, **dd)
        self.decoder = Decoder(out_ch=3, **dd)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = VectorQuantizer2(vocab_size, z_channels, beta, v_patch_nums, quant_resi, share_quant_resi)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)

    def forward(self, x, collect=False):
        f = self.quant_conv(self.encoder(x))
        f_hat, vq_loss, hits = self.quantize(f, collect=collect)
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, hits, f

    def img_to_f(self, x):
        return self.quant_conv(self.encoder(x))

    @torch.no_grad()
    def img_to_idxBl(self, x):
        return self.quantize.f_to_idxBl(self.img_to_f(x))

    def fhat_to_img(self, f_hat):
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    @torch.no_grad()
    def idxBl_to_img(self, idx_Bl):
        return self.fhat_to_img(self.quantize.idxBl_to_fhat(idx_Bl))


# ======================================================================================================
# VAR
# ======================================================================================================

class FFN(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, C, num_heads, attn_l2_norm=True):
        super().__init__()
        assert C % num_heads == 0 and attn_l2_norm
        self.num_heads, self.head_dim = num_heads, C // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log(), requires_grad=True)
        self.max_scale_mul = torch.log(torch.tensor(100)).item()
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x, attn_bias):
        B, L, C = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(dim=0)
        scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q, dim=-1).mul(scale_mul)
        k = F.normalize(k, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1, dropout_p=0.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class AdaLNSelfAttn(nn.Module):
    def __init__(self, C, D, num_heads, mlp_ratio=4.0, norm_eps=1e-6, attn_l2_norm=True, drop_path=0.0):
        super().__init__()
        self.C, self.D = C, D
        self.drop_path_rate = drop_path  # training only (official DropPath); no state
        self.attn = SelfAttention(C, num_heads, attn_l2_norm)
        self.ffn = FFN(C, round(C * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 6 * C))

    def forward(self, x, cond_BD, attn_bias):
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x).mul(s1.add(1)).add_(b1), attn_bias).mul_(g1))
        x = x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(s2.add(1)).add_(b2)).mul(g2))
        return x

    def drop_path(self, x):
        if self.drop_path_rate == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_path_rate
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C, D, norm_eps=1e-6):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


def level_ids(patch_nums):
    return torch.cat([torch.full((pn * pn,), i, dtype=torch.int64) for i, pn in enumerate(patch_nums)])


class VAR(nn.Module):
    def __init__(self, vocab_size=512, Cvae=16, num_classes=9, depth=4, embed_dim=96, num_heads=3, mlp_ratio=4.0,
                 norm_eps=1e-6, cond_drop_rate=0.1, patch_nums=(1, 2, 3, 4, 5, 6, 8), drop_path_rate=0.0):
        super().__init__()
        self.V, self.Cvae, self.num_classes, self.depth = vocab_size, Cvae, num_classes, depth
        self.C = self.D = embed_dim
        self.cond_drop_rate = cond_drop_rate
        self.patch_nums = tuple(patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        C = embed_dim
        init_std = math.sqrt(1 / C / 3)
        self.word_embed = nn.Linear(Cvae, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)
        nn.init.trunc_normal_(self.class_emb.weight.data, mean=0, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        nn.init.trunc_normal_(self.pos_start.data, mean=0, std=init_std)
        pos_1LC = []
        for pn in self.patch_nums:
            pe = torch.empty(1, pn * pn, C)
            nn.init.trunc_normal_(pe, mean=0, std=init_std)
            pos_1LC.append(pe)
        self.pos_1LC = nn.Parameter(torch.cat(pos_1LC, dim=1))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        nn.init.trunc_normal_(self.lvl_embed.weight.data, mean=0, std=init_std)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # official stochastic depth decay rule
        self.blocks = nn.ModuleList([AdaLNSelfAttn(C, C, num_heads, mlp_ratio, norm_eps, drop_path=dpr[i])
                                     for i in range(depth)])
        d = level_ids(self.patch_nums).view(1, self.L, 1)
        dT = d.transpose(1, 2)
        self.register_buffer("lvl_1L", dT[:, 0].contiguous())
        # official buffer: block-causal (0 where level(q) >= level(k), -inf elsewhere)
        self.register_buffer("attn_bias_for_masking",
                             torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L).contiguous())
        self.head_nm = AdaLNBeforeHead(C, C, norm_eps)
        self.head = nn.Linear(C, vocab_size)
        self.init_weights(init_std=init_std)

    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=0.02):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight.data, std=init_std)
                if m.bias is not None:
                    m.bias.data.zero_()
        self.head.weight.data.mul_(init_head)
        self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        C = self.C
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
            b.ada_lin[-1].weight.data[2 * C:].mul_(init_adaln)
            b.ada_lin[-1].weight.data[:2 * C].mul_(init_adaln_gamma)
            b.ada_lin[-1].bias.data.zero_()

    def attn_mask(self, kind):
        d = self.lvl_1L.view(1, self.L, 1)
        dT = d.transpose(1, 2)
        if kind == "causal":
            return torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        if kind == "markov":
            return torch.where(d == dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        raise ValueError(kind)

    def forward(self, label_B, x_BLCv_wo_first_l, attn_bias, cond_drop=None):
        """Official VAR.forward (teacher forcing): returns logits (B, L, V). attn_bias: (1,1,L,L) additive mask."""
        B = x_BLCv_wo_first_l.shape[0]
        rate = self.cond_drop_rate if cond_drop is None else cond_drop
        if rate > 0:
            label_B = torch.where(torch.rand(B, device=label_B.device) < rate,
                                  torch.full_like(label_B, self.num_classes), label_B)
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x = x + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        for b in self.blocks:
            x = b(x, cond_BD, attn_bias)
        return self.head(self.head_nm(x.float(), cond_BD).float()).float()

    # ---- Markovian sampling (VAR_SPEC 11.5; every scale run alone, no KV cache, no mask) ----
    @torch.no_grad()
    def sample_markov(self, vae, label, cfg=3.0, top_k=1, top_p=0.0, seed=0, B=1, return_all=False,
                      attention="markov"):
        """label: int (class index; num_classes = null) or LongTensor (B,). Linear CFG ramp t = cfg*si/(SN-1).
        attention='causal' runs the official KV-cached loop instead. Returns images in [0,1] (B,3,H,W)."""
        dev = self.pos_1LC.device
        rng = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
        if isinstance(label, int):
            label_B = torch.full((B,), label, dtype=torch.int64, device=dev)
        else:
            label_B = label.to(dev)
            B = label_B.shape[0]
        SN = len(self.patch_nums)
        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x = sos.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1) \
            + lvl_pos[:, :self.first_l]
        P = self.patch_nums[-1]
        f_hat = sos.new_zeros(B, self.Cvae, P, P)
        q = vae.quantize
        out = {}
        cache_x = []
        for si, pn in enumerate(self.patch_nums):
            if attention == "causal":
                cache_x.append(x)
                xa = torch.cat(cache_x, dim=1)
                L_now = xa.shape[1]
                h = xa
                mask = self.attn_mask("causal")[:, :, :L_now, :L_now]
                for b in self.blocks:
                    h = b(h, cond_BD, mask)
                h = h[:, -pn * pn:]
            else:
                h = x
                for b in self.blocks:
                    h = b(h, cond_BD, None)
            logits = self.head(self.head_nm(h.float(), cond_BD).float()).float()
            t = cfg * si / (SN - 1)
            logits = (1 + t) * logits[:B] - t * logits[B:]
            if return_all:
                out[f"logits_{si}"] = logits.clone()
            idx = sample_top_k_top_p_(logits, top_k=top_k, top_p=top_p, rng=rng)[:, :, 0]
            out[f"idx_{si}"] = idx
            h_BChw = q.embedding(idx).transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
            if si != SN - 1:
                f_hat.add_(q.quant_resi[si / (SN - 1)](F.interpolate(h_BChw, size=(P, P), mode="bicubic")))
                pn_next = self.patch_nums[si + 1]
                nxt = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, self.Cvae, -1).transpose(1, 2)
                b0, _ = self.begin_ends[si + 1]
                x = (self.word_embed(nxt) + lvl_pos[:, b0:b0 + pn_next ** 2]).repeat(2, 1, 1)
            else:
                f_hat.add_(q.quant_resi[si / (SN - 1)](h_BChw))
            out[f"fhat_{si}"] = f_hat.clone()
        img = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
        out["image"] = img
        return out if return_all else img


def sample_top_k_top_p_(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    """Official sample_with_top_k_top_p_ (mask, softmax, multinomial)."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        idx_to_remove = logits_BlV < logits_BlV.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(idx_to_remove, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        sorted_idx_to_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_idx_to_remove[..., -1:] = False
        logits_BlV.masked_fill_(sorted_idx_to_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_idx_to_remove), -torch.inf)
    return torch.multinomial(logits_BlV.softmax(dim=-1).view(-1, V), num_samples=num_samples, replacement=True,
                             generator=rng).view(B, l, num_samples)
