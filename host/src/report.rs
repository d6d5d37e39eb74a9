//! What the image commands (`sample`, `reconstruct`, `edit`, `upscale`) say when they finish:
//! one closing line of timings, or the same figures as fields of the `--json` object.

use serde_json::{Map, Value};
use srdd_core::kernels::dispatch::Isa;
use std::time::Instant;

/// Wall time of one command and where it ran: how many images, the kernel ISA, the threads,
/// the compute backend.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Images the command produced.
    pub images: usize,
    /// Seconds from the start of the command's work to the written output.
    pub wall_s: f64,
    /// The kernels' instruction set on this machine.
    pub isa: Isa,
    /// Worker threads the command ran on.
    pub threads: usize,
    /// The compute backend, as `--backend` names it (`cpu`, `cuda`).
    pub backend: &'static str,
    /// The backend's device (the GPU's name), `None` on the CPU.
    pub device: Option<String>,
}

impl Timing {
    /// The time since `start` for `images` images on `threads` threads, on the active ISA and
    /// the CPU backend.
    pub fn since(start: Instant, images: usize, threads: usize) -> Self {
        Self {
            images,
            wall_s: start.elapsed().as_secs_f64(),
            isa: Isa::active(),
            threads,
            backend: "cpu",
            device: None,
        }
    }

    /// The same timing on backend `backend` (`cpu`, `cuda`) and its `device`.
    pub fn on(self, backend: &'static str, device: Option<&str>) -> Self {
        Self {
            backend,
            device: device.map(str::to_string),
            ..self
        }
    }

    /// The backend as people read it: `cpu`, or `cuda (NVIDIA H200)`.
    pub fn backend_text(&self) -> String {
        match &self.device {
            Some(d) => format!("{} ({d})", self.backend),
            None => self.backend.to_string(),
        }
    }

    /// Milliseconds per image.
    pub fn ms_per_image(&self) -> f64 {
        1e3 * self.wall_s / self.images.max(1) as f64
    }

    /// Images per second (a floor on the wall time keeps it finite on a coarse clock).
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.wall_s.max(1e-9)
    }

    /// The human closing line, e.g. `done: 16 images in 0.21 s (13.1 ms/image, 76.2 images/s),
    /// isa Avx2, 2 threads, backend cpu` (or `backend cuda (NVIDIA H200)`).
    pub fn line(&self) -> String {
        format!(
            "done: {} image{} in {:.2} s ({:.1} ms/image, {:.1} images/s), isa {:?}, {} thread{}, backend {}",
            self.images,
            if self.images == 1 { "" } else { "s" },
            self.wall_s,
            self.ms_per_image(),
            self.images_per_s(),
            self.isa,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.backend_text(),
        )
    }

    /// Adds `images`, `wall_s`, `ms_per_image`, `images_per_s`, `isa`, `threads`, `backend`
    /// and (on a device) `device` to `obj`.
    pub fn add_to(&self, obj: &mut Map<String, Value>) {
        obj.insert("images".into(), self.images.into());
        obj.insert("wall_s".into(), self.wall_s.into());
        obj.insert("ms_per_image".into(), self.ms_per_image().into());
        obj.insert("images_per_s".into(), self.images_per_s().into());
        obj.insert("isa".into(), format!("{:?}", self.isa).into());
        obj.insert("threads".into(), self.threads.into());
        obj.insert("backend".into(), self.backend.into());
        if let Some(d) = &self.device {
            obj.insert("device".into(), d.as_str().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_rates_agree() {
        let t = Timing {
            images: 16,
            wall_s: 0.2,
            isa: Isa::Scalar,
            threads: 2,
            backend: "cpu",
            device: None,
        };
        assert_eq!(
            t.line(),
            "done: 16 images in 0.20 s (12.5 ms/image, 80.0 images/s), isa Scalar, 2 threads, \
             backend cpu"
        );
        let one = Timing {
            images: 1,
            threads: 1,
            ..t.clone()
        };
        assert!(one.line().starts_with("done: 1 image in"), "{}", one.line());
        assert!(
            one.line().ends_with(", 1 thread, backend cpu"),
            "{}",
            one.line()
        );
        let mut m = Map::new();
        t.add_to(&mut m);
        assert_eq!(m["ms_per_image"], 12.5);
        assert_eq!(m["isa"], "Scalar");
        assert_eq!(m["backend"], "cpu");
        assert!(!m.contains_key("device"));
        let gpu = t.on("cuda", Some("NVIDIA H200"));
        assert!(
            gpu.line()
                .ends_with(", 2 threads, backend cuda (NVIDIA H200)"),
            "{}",
            gpu.line()
        );
        let mut m = Map::new();
        gpu.add_to(&mut m);
        assert_eq!(m["backend"], "cuda");
        assert_eq!(m["device"], "NVIDIA H200");
    }
}
