//! The VQVAE decoder on the device, the CPU's whole-image decoder (`core/src/vae`) op for op:
//! `post_quant_conv`, `conv_in`, the middle section, the levels (ResBlocks, attention, nearest
//! ×2 + conv), GroupNorm + SiLU, `conv_out`, clamp, then RGB rows to the host.

use crate::driver::{Args, DevBuf, Gpu};
use crate::error::{GpuError, Result};
use crate::model::{DevAttnBlock, DevConv, DevResBlock, DeviceModel};
use crate::ops::{self, ConvScratch};

/// The decoder's device buffers, sized from the model's config.
pub(crate) struct DecodeBufs {
    a: DevBuf,      // current map, max_act
    b: DevBuf,      // normalised / upsampled map, max_act
    c: DevBuf,      // conv output, max_act
    qkv: DevBuf,    // attention q|k|v, 3C × hw
    scores: DevBuf, // attention probabilities, hw × hw
    stats: DevBuf,  // GroupNorm (mean, rstd) per group, f64
    f_hat: DevBuf,  // Cvae × P × P
    rgb: DevBuf,    // side × side × 3
    conv: ConvScratch,
    host: Vec<f32>,
}

impl DecodeBufs {
    pub(crate) fn new(dm: &DeviceModel<'_>) -> Result<Self> {
        let cfg = &dm.model.config;
        let gpu = dm.gpu;
        let nl = cfg.num_levels();
        let p = cfg.latent_side();
        let cv = cfg.vae.cvae as usize;
        let mut max_act = cv * p * p;
        let mut max_codes = cv * (p + 2) * p;
        let mut block_in = cfg.level_channels(nl - 1);
        for lvl in (0..nl).rev() {
            let side = p << (nl - 1 - lvl);
            let ch = block_in.max(cfg.level_channels(lvl));
            max_act = max_act.max(ch * side * side);
            max_codes = max_codes.max(ch * (side + 2) * side);
            block_in = cfg.level_channels(lvl);
        }
        let side = cfg.image_side();
        max_act = max_act.max(3 * side * side);
        let deep = cfg.level_channels(nl - 1);
        let groups = cfg.vae.gn_groups as usize;
        Ok(DecodeBufs {
            a: gpu.alloc::<f32>(max_act)?,
            b: gpu.alloc::<f32>(max_act)?,
            c: gpu.alloc::<f32>(max_act)?,
            qkv: gpu.alloc::<f32>(3 * deep * p * p)?,
            scores: gpu.alloc::<f32>(p * p * p * p)?,
            stats: gpu.alloc::<f64>(2 * groups)?,
            f_hat: gpu.alloc::<f32>(cv * p * p)?,
            rgb: gpu.alloc::<f32>(3 * side * side)?,
            conv: ConvScratch::new(gpu, max_codes, side)?,
            host: vec![0.0; 3 * side * side],
        })
    }

    /// Decodes `f_hat`, handing each image row (interleaved RGB, clamped) to `sink`.
    pub(crate) fn decode(
        &mut self,
        dm: &DeviceModel<'_>,
        f_hat: &[f32],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let cfg = &dm.model.config;
        let gpu = dm.gpu;
        let d = &dm.decoder;
        let p = cfg.latent_side();
        let cv = cfg.vae.cvae as usize;
        if f_hat.len() != cv * p * p {
            return Err(GpuError::Core(srdd_core::Error::BadLength {
                what: "f_hat",
                expected: cv * p * p,
                found: f_hat.len(),
            }));
        }
        gpu.write(&self.f_hat, 0, f_hat)?;
        let mut net = Net {
            gpu,
            bufs: self,
            groups: cfg.vae.gn_groups as usize,
            eps: cfg.vae.gn_eps,
        };
        let fh = net.bufs.f_hat.ptr();
        let c = net.bufs.c.ptr();
        ops::conv(gpu, fh, (p, p), &d.post_quant_conv, 1, c, &net.bufs.conv)?;
        net.rotate();
        net.conv_a_to_c(&d.conv_in, p)?;
        net.rotate();
        net.res_block(&d.mid.0, p)?;
        if let Some(a) = &d.mid.1 {
            net.attn_block(a, p)?;
        }
        net.res_block(&d.mid.2, p)?;
        let mut side = p;
        for level in &d.levels {
            for (j, rb) in level.blocks.iter().enumerate() {
                net.res_block(rb, side)?;
                if let Some(a) = level.attns.get(j) {
                    net.attn_block(a, side)?;
                }
            }
            if let Some(up) = &level.upsample {
                let a = Args::new()
                    .p(net.bufs.a.ptr())
                    .p(net.bufs.b.ptr())
                    .i(up.cin)
                    .i(side)
                    .i(side);
                ops::each(gpu, "upsample2", up.cin * 4 * side * side, a)?;
                side *= 2;
                let (b, c) = (net.bufs.b.ptr(), net.bufs.c.ptr());
                ops::conv(gpu, b, (side, side), up, 1, c, &net.bufs.conv)?;
                net.rotate();
            }
        }
        net.norm_a_to_b(&d.norm_out, side, true)?;
        let (b, c) = (net.bufs.b.ptr(), net.bufs.c.ptr());
        ops::conv(
            gpu,
            b,
            (side, side),
            &d.conv_out,
            d.conv_out.k / 2,
            c,
            &net.bufs.conv,
        )?;
        let hw = side * side;
        let a = Args::new().p(c).i(hw).p(net.bufs.rgb.ptr());
        ops::each(gpu, "to_rgb_rows", 3 * hw, a)?;
        let bufs = net.bufs;
        gpu.read(&bufs.rgb, 0, &mut bufs.host[..3 * hw])?;
        for y in 0..side {
            sink(y, &bufs.host[y * 3 * side..(y + 1) * 3 * side]);
        }
        Ok(())
    }
}

/// The rotating maps of one decode (`a` current, `b` normalised input, `c` conv output).
struct Net<'x> {
    gpu: &'x Gpu,
    bufs: &'x mut DecodeBufs,
    groups: usize,
    eps: f32,
}

impl Net<'_> {
    fn rotate(&mut self) {
        std::mem::swap(&mut self.bufs.a, &mut self.bufs.c);
    }

    /// Same-size conv of `a` into `c`.
    fn conv_a_to_c(&mut self, conv: &DevConv, side: usize) -> Result<()> {
        let (a, c) = (self.bufs.a.ptr(), self.bufs.c.ptr());
        ops::conv(
            self.gpu,
            a,
            (side, side),
            conv,
            conv.k / 2,
            c,
            &self.bufs.conv,
        )
    }

    /// Same-size conv of `b` into `c`.
    fn conv_b_to_c(&mut self, conv: &DevConv, side: usize) -> Result<()> {
        let (b, c) = (self.bufs.b.ptr(), self.bufs.c.ptr());
        ops::conv(
            self.gpu,
            b,
            (side, side),
            conv,
            conv.k / 2,
            c,
            &self.bufs.conv,
        )
    }

    fn norm(
        &mut self,
        from: u64,
        n: &crate::model::DevNorm,
        side: usize,
        silu: bool,
    ) -> Result<()> {
        let b = self.bufs.b.ptr();
        ops::group_norm(
            self.gpu,
            from,
            b,
            (n.c, side * side),
            (self.groups, self.eps),
            n,
            silu,
            &self.bufs.stats,
        )
    }

    fn norm_a_to_b(&mut self, n: &crate::model::DevNorm, side: usize, silu: bool) -> Result<()> {
        let a = self.bufs.a.ptr();
        self.norm(a, n, side, silu)
    }

    /// ResBlock on `a` (result in `a`).
    fn res_block(&mut self, rb: &DevResBlock, side: usize) -> Result<()> {
        let hw = side * side;
        let cout = rb.conv1.cout;
        self.norm_a_to_b(&rb.norm1, side, true)?;
        self.conv_b_to_c(&rb.conv1, side)?;
        let c = self.bufs.c.ptr();
        self.norm(c, &rb.norm2, side, true)?;
        self.conv_b_to_c(&rb.conv2, side)?;
        let (a, b, c) = (self.bufs.a.ptr(), self.bufs.b.ptr(), self.bufs.c.ptr());
        if let Some(nin) = &rb.nin_shortcut {
            ops::conv(self.gpu, a, (side, side), nin, 0, b, &self.bufs.conv)?;
            ops::add(self.gpu, c, b, cout * hw)?;
        } else {
            ops::add(self.gpu, c, a, cout * hw)?;
        }
        self.rotate();
        Ok(())
    }

    /// Single-head attention over the `side × side` tokens of `a` (result in `a`).
    fn attn_block(&mut self, ab: &DevAttnBlock, side: usize) -> Result<()> {
        let hw = side * side;
        let ch = ab.qkv.cin;
        self.norm_a_to_b(&ab.norm, side, false)?;
        let (b, qkv) = (self.bufs.b.ptr(), self.bufs.qkv.ptr());
        ops::conv(self.gpu, b, (side, side), &ab.qkv, 0, qkv, &self.bufs.conv)?;
        let s = self.bufs.scores.ptr();
        let scale = 1.0 / (ch as f32).sqrt();
        ops::each(
            self.gpu,
            "vae_attn_scores",
            hw * hw,
            Args::new().p(qkv).i(ch).i(hw).f(scale).p(s),
        )?;
        self.gpu.launch(
            "softmax_rows",
            (hw.div_ceil(64) as u32, 1, 1),
            64,
            0,
            &Args::new().p(s).i(hw).i(hw),
        )?;
        ops::each(
            self.gpu,
            "vae_attn_out",
            ch * hw,
            Args::new().p(qkv).p(s).i(ch).i(hw).p(b),
        )?;
        let c = self.bufs.c.ptr();
        ops::conv(
            self.gpu,
            b,
            (side, side),
            &ab.proj_out,
            0,
            c,
            &self.bufs.conv,
        )?;
        let a = self.bufs.a.ptr();
        ops::add(self.gpu, c, a, ch * hw)?;
        self.rotate();
        Ok(())
    }
}
