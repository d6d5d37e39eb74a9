//! Hooks that observe and steer the sampling loop (editing, teacher forcing, progress).

/// Observes and steers the loop; every method has a no-op default.
pub trait StepHook {
    /// Conditional logits of token `t` of step `k`, before guidance and filtering.
    fn logits(&mut self, _k: usize, _t: usize, _cond: &[f32]) {}
    /// Guided logits of token `t` of step `k` (after the CFG mix, before filtering).
    fn guided_logits(&mut self, _k: usize, _t: usize, _logits: &[f32]) {}
    /// May overwrite sampled tokens of step `k` (editing, teacher forcing).
    fn force(&mut self, _k: usize, _pn: usize, _tokens: &mut [u32]) {}
    /// Called after step `k` updated `f_hat`.
    fn scale_done(&mut self, _k: usize, _tokens: &[u32], _f_hat: &[f32]) {}
}

/// A hook that does nothing.
pub struct NoHook;
impl StepHook for NoHook {}

/// Two hooks in sequence: every call goes to the first, then to the second (so a forcing hook
/// and an observer compose).
pub struct Both<A, B>(pub A, pub B);

impl<A: StepHook, B: StepHook> StepHook for Both<A, B> {
    fn logits(&mut self, k: usize, t: usize, cond: &[f32]) {
        self.0.logits(k, t, cond);
        self.1.logits(k, t, cond);
    }
    fn guided_logits(&mut self, k: usize, t: usize, logits: &[f32]) {
        self.0.guided_logits(k, t, logits);
        self.1.guided_logits(k, t, logits);
    }
    fn force(&mut self, k: usize, pn: usize, tokens: &mut [u32]) {
        self.0.force(k, pn, tokens);
        self.1.force(k, pn, tokens);
    }
    fn scale_done(&mut self, k: usize, tokens: &[u32], f_hat: &[f32]) {
        self.0.scale_done(k, tokens, f_hat);
        self.1.scale_done(k, tokens, f_hat);
    }
}

impl<H: StepHook + ?Sized> StepHook for &mut H {
    fn logits(&mut self, k: usize, t: usize, cond: &[f32]) {
        (**self).logits(k, t, cond)
    }
    fn guided_logits(&mut self, k: usize, t: usize, logits: &[f32]) {
        (**self).guided_logits(k, t, logits)
    }
    fn force(&mut self, k: usize, pn: usize, tokens: &mut [u32]) {
        (**self).force(k, pn, tokens)
    }
    fn scale_done(&mut self, k: usize, tokens: &[u32], f_hat: &[f32]) {
        (**self).scale_done(k, tokens, f_hat)
    }
}
