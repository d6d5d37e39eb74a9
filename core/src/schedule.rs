//! Scale schedules as data: which patch sizes run, which level embedding and position slice
//! each uses, and which Phi convolution accumulates it.
//!
//! The rule for a shortened (distilled) schedule lives here and only here: each step uses the
//! level and position slice of the same patch size in the model's full schedule, and its Phi
//! index comes from the official tick rule applied to the shortened schedule.

use crate::config::{official_phi_index, ModelConfig, MAX_SCALES};
use crate::error::{Error, Result};
use heapless::Vec;

/// A validated sampling schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Patch size of each step.
    pub pn: Vec<u16, MAX_SCALES>,
    /// Level (index into the model's `patch_nums`) of each step: its `lvl_embed` row and
    /// `pos_1LC` slice.
    pub level: Vec<u8, MAX_SCALES>,
    /// Phi convolution of each step.
    pub phi: Vec<u8, MAX_SCALES>,
}

impl Schedule {
    /// The model's own schedule, with the Phi table stored in the file.
    pub fn full(cfg: &ModelConfig) -> Schedule {
        Schedule {
            pn: cfg.patch_nums.clone(),
            level: cfg.level_index.clone(),
            phi: cfg.phi_index.clone(),
        }
    }

    /// A schedule over a subset of the model's patch sizes (e.g. 1-3-5-8-13-16).
    pub fn subset(cfg: &ModelConfig, pns: &[u16]) -> Result<Schedule> {
        if pns == cfg.patch_nums.as_slice() {
            return Ok(Self::full(cfg));
        }
        let mut level = Vec::<u8, MAX_SCALES>::new();
        let mut phi = Vec::<u8, MAX_SCALES>::new();
        for (k, pn) in pns.iter().enumerate() {
            let lvl = cfg
                .patch_nums
                .iter()
                .position(|p| p == pn)
                .ok_or(Error::BadSchedule(
                    "a patch size is not in the model's schedule",
                ))?;
            level
                .push(lvl as u8)
                .map_err(|_| Error::BadSchedule("too many steps"))?;
            let k = official_phi_index(cfg.vae.num_phi as usize, pns.len(), k);
            let _ = phi.push(k as u8);
        }
        let s = Schedule {
            pn: Vec::from_slice(pns).map_err(|_| Error::BadSchedule("too many steps"))?,
            level,
            phi,
        };
        s.validate(cfg)?;
        Ok(s)
    }

    /// A schedule with explicit level and Phi tables (as parity manifests give them).
    pub fn with_tables(
        cfg: &ModelConfig,
        pns: &[u16],
        levels: &[u8],
        phi: &[u8],
    ) -> Result<Schedule> {
        let err = |_| Error::BadSchedule("too many steps");
        let s = Schedule {
            pn: Vec::from_slice(pns).map_err(err)?,
            level: Vec::from_slice(levels).map_err(err)?,
            phi: Vec::from_slice(phi).map_err(err)?,
        };
        s.validate(cfg)?;
        Ok(s)
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.pn.len()
    }

    /// True for a schedule without steps (never valid).
    pub fn is_empty(&self) -> bool {
        self.pn.is_empty()
    }

    /// Tokens of step `k`.
    pub fn tokens(&self, k: usize) -> usize {
        self.pn[k] as usize * self.pn[k] as usize
    }

    /// Largest step in tokens.
    pub fn max_tokens(&self) -> usize {
        (0..self.len()).map(|k| self.tokens(k)).max().unwrap_or(0)
    }

    /// Total tokens over all steps.
    pub fn total_tokens(&self) -> usize {
        (0..self.len()).map(|k| self.tokens(k)).sum()
    }

    /// Checks the schedule against the model.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let n = self.pn.len();
        if n == 0 {
            return Err(Error::BadSchedule("empty schedule"));
        }
        if self.level.len() != n || self.phi.len() != n {
            return Err(Error::BadSchedule(
                "level/phi tables differ in length from the schedule",
            ));
        }
        if self.pn.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::BadSchedule("patch sizes must increase"));
        }
        if *self.pn.last().unwrap_or(&0) as usize != cfg.latent_side() {
            return Err(Error::BadSchedule("the last step must be the latent size"));
        }
        for k in 0..n {
            let lvl = self.level[k] as usize;
            if lvl >= cfg.num_scales() || cfg.patch_nums[lvl] != self.pn[k] {
                return Err(Error::BadSchedule(
                    "a step's level does not have the step's patch size",
                ));
            }
            if self.phi[k] as u32 >= cfg.vae.num_phi.max(1) {
                return Err(Error::BadSchedule("phi index out of range"));
            }
        }
        Ok(())
    }
}
