//! Settings that make llama.cpp compute a token inside a batch exactly as it computes it alone.
//!
//! Two CPU paths break batch invariance (FACTS.md, measured on both Qwen models): runtime weight
//! repacking (`q4_K_8x8`, which sends rows in groups of 4 to a gemm kernel and the rest to a gemv kernel)
//! and, from 8 rows on, the tiled K-quant kernels. Repacking is switched off at build time
//! (`GGML_CPU_REPACK=OFF` in `.cargo/config.toml`); the tiled kernels are read from the environment once,
//! at the first matrix multiplication, so [`apply`] must run before any model is loaded.
//!
//! Repacking off leaves llama.cpp's per-row dot product, invariant but slow for blocks; [`apply`] also
//! installs Duet's own batch-invariant kernels ([`crate::kernels`]), which take every product of the
//! shipped models' quantised weights.
//!
//! Two more are in flash attention, and only with keys and values of the same F16/F32 type: a one-row
//! call over more than 256 cached tokens splits the KV range across threads, and a call of 64 rows or
//! more is tiled. The verifier's default KV cache, Q8_0 keys with F16 values ([`crate::KvCacheKind`]),
//! takes neither.

use std::sync::Once;

static APPLY: Once = Once::new();

/// Switches off llama.cpp's tiled matmul kernels for this process unless the user set
/// `GGML_CPU_TILED_MM` explicitly.
pub fn apply() {
    APPLY.call_once(|| {
        if std::env::var_os("GGML_CPU_TILED_MM").is_none() {
            // SAFETY: runs once, before the first model load of this process starts llama.cpp's threads,
            // and nothing in Duet reads or writes the environment concurrently with model loading.
            unsafe { std::env::set_var("GGML_CPU_TILED_MM", "0") };
        }
        crate::kernels::install();
    });
}
