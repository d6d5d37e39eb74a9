//! The kernel sources (`gpu/kernels/*.cu`, included at build time) and their NVRTC compilation.
//!
//! The files are compiled as one program, `common.cuh` first, so they share helpers without any
//! `#include` and read no CUDA header. [`compile`] runs once per process per architecture (the
//! result is cached).

use crate::error::{GpuError, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// The kernel files, in compilation order: (name, source).
pub const FILES: [(&str, &str); 8] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("quant.cu", include_str!("../kernels/quant.cu")),
    ("gemm_i8.cu", include_str!("../kernels/gemm_i8.cu")),
    ("gemm_f32.cu", include_str!("../kernels/gemm_f32.cu")),
    ("norm.cu", include_str!("../kernels/norm.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("vae.cu", include_str!("../kernels/vae.cu")),
];

/// Every `extern "C"` kernel the backend launches (each is looked up when a device opens).
pub const KERNELS: &[&str] = &[
    "quantize_rows",
    "quantize_residual_rows",
    "quantize_conv_rows",
    "linear_i8_mma",
    "linear_i8_dp4a",
    "sums_i8_mma",
    "conv_i8_mma",
    "conv_i8_dp4a",
    "linear_f",
    "conv_f",
    "ln_modulate",
    "gn_stats",
    "gn_apply",
    "attention_hd32",
    "attention_hd64",
    "attention_hd128",
    "embed_sos",
    "input_tokens",
    "embed_words",
    "silu_labels",
    "rows_by_label",
    "add_gss",
    "qkv_post",
    "kv_to_cache",
    "gelu_inplace",
    "residual_gamma",
    "add_inplace",
    "upsample2",
    "vae_attn_scores",
    "softmax_rows",
    "vae_attn_out",
    "to_rgb_rows",
];

/// The whole program: every file, with a `#line` marker so NVRTC's messages name the file.
pub fn source() -> String {
    let mut s = String::new();
    for (name, text) in FILES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// Whether an NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX of every kernel for `arch` (`compute_90`, `sm_75`…), compiled once per process.
pub fn compile(arch: &str) -> Result<String> {
    static CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ptx) = cache.as_ref().and_then(|c| c.get(arch)) {
        return Ok(ptx.clone());
    }
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
        ],
        name: Some("srdd_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source(), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            let log = log.to_string_lossy();
            let first: Vec<&str> = log
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            GpuError::Compile(first.join(" | "))
        }
        other => GpuError::Compile(format!("{other:?}")),
    })?;
    let text = ptx.to_src();
    cache
        .get_or_insert_with(HashMap::new)
        .insert(arch.to_string(), text.clone());
    Ok(text)
}
