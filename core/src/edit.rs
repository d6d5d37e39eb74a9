//! Zero-shot editing (`docs/SPEC.md` §10): after each step, tokens where the keep mask (resized
//! bilinearly to the step's size, strictly above 0.5; every token when `pn² ≤ 3`) is set are
//! replaced by the source image's tokens. In-painting keeps the outside of a box, out-painting
//! the inside; the same hook serves super-resolution by keeping every token of coarse steps.

use crate::generate::StepHook;
use crate::vq::bilinear_resize;

/// The official force rule: `force[i] = bilinear(keep, P → pn)[i] > 0.5`, all when `pn² ≤ 3`.
/// `resized` needs `pn²` floats.
pub fn force_mask(keep: &[f32], p: usize, pn: usize, resized: &mut [f32], force: &mut [bool]) {
    let m = pn * pn;
    if m <= 3 {
        force[..m].iter_mut().for_each(|f| *f = true);
        return;
    }
    bilinear_resize(keep, p, pn, &mut resized[..m]);
    for (f, v) in force[..m].iter_mut().zip(resized.iter()) {
        *f = *v > 0.5;
    }
}

/// Forces source tokens where the keep mask says so.
pub struct EditHook<'a> {
    /// Keep mask at latent resolution (`P × P`, 1 = keep the source).
    pub keep: &'a [f32],
    /// Latent side `P`.
    pub p: usize,
    /// Source tokens of every step, concatenated row-major.
    pub source: &'a [u32],
    /// `max_tokens` floats of scratch.
    pub resized: &'a mut [f32],
    /// `max_tokens` flags: the force mask of the last step (readable after each step).
    pub force: &'a mut [bool],
    offset: usize,
    step: Option<(usize, usize)>,
}

impl<'a> EditHook<'a> {
    /// A hook forcing `source` tokens where `keep` (`P × P`) says so; `resized` and `force` need
    /// `max_tokens` entries each.
    pub fn new(
        keep: &'a [f32],
        p: usize,
        source: &'a [u32],
        resized: &'a mut [f32],
        force: &'a mut [bool],
    ) -> Self {
        EditHook {
            keep,
            p,
            source,
            resized,
            force,
            offset: 0,
            step: None,
        }
    }
}

impl StepHook for EditHook<'_> {
    fn force(&mut self, k: usize, pn: usize, tokens: &mut [u32]) {
        let m = pn * pn;
        // Refinement passes call again with the same step: the source offset moves only when
        // the step changes.
        match self.step {
            Some((prev, prev_m)) if prev != k => self.offset += prev_m,
            _ => {}
        }
        self.step = Some((k, m));
        force_mask(self.keep, self.p, pn, self.resized, self.force);
        for (i, t) in tokens.iter_mut().enumerate().take(m) {
            if self.force[i] {
                if let Some(&s) = self.source.get(self.offset + i) {
                    *t = s;
                }
            }
        }
    }
}
