//! The entry from llama.cpp: the hook its CPU matrix multiplication calls first
//! (`verifier/ggml/mul-mat-hook.cmake`), and the choice of path.

use std::ffi::c_int;
use std::sync::OnceLock;

use llama_cpp_sys_2::{GGML_TYPE_F32, ggml_tensor};

use super::packed::lookup;
use super::{Path, Rows, WeightType, mul_mat};

type Hook = unsafe extern "C" fn(*const ggml_tensor, c_int, c_int) -> bool;

unsafe extern "C" {
    /// Defined by the hook's patch of ggml-cpu.c.
    fn duet_ggml_set_mul_mat_hook(hook: Option<Hook>);
}

static SELECTED: OnceLock<Option<Path>> = OnceLock::new();

/// The path the hook runs: `DUET_KERNELS` (`avx512`, `avx2`, `off`; unset or `auto`: the best this
/// CPU has), read once. `None`: llama.cpp's own per-row kernels do every product.
pub fn selected() -> Option<Path> {
    *SELECTED.get_or_init(|| {
        let wanted = std::env::var("DUET_KERNELS").unwrap_or_default();
        let path = match wanted.as_str() {
            "off" => None,
            "avx512" => Some(Path::Avx512Vnni).filter(|p| p.available()),
            "avx2" => Some(Path::Avx2).filter(|p| p.available()),
            _ => Path::detect(),
        };
        match path {
            Some(p) => tracing::debug!(path = p.name(), "batch-invariant kernels"),
            None => tracing::info!(wanted, "batch-invariant kernels off: llama.cpp's per-row kernels do every product"),
        }
        path
    })
}

/// Registers the hook with llama.cpp (once; before the first model load).
pub fn install() {
    if selected().is_some() {
        // SAFETY: sets a plain function pointer that llama.cpp reads at each matrix multiplication;
        // runs before any model is loaded, so no product is in flight.
        unsafe { duet_ggml_set_mul_mat_hook(Some(hook)) };
    }
}

/// Takes the product `dst = src0 · src1ᵀ` when the weights `src0` are a type the kernels know and
/// both operands are plain 2-D matrices; returns false to leave it to llama.cpp.
///
/// # Safety
/// Called by llama.cpp with a valid MUL_MAT node, once by each of its `nth` threads.
unsafe extern "C" fn hook(dst: *const ggml_tensor, ith: c_int, nth: c_int) -> bool {
    let Some(path) = selected() else { return false };
    // SAFETY: llama.cpp's contract: a MUL_MAT node with two sources.
    let (dst, w, x) = unsafe { (&*dst, &*(*dst).src[0], &*(*dst).src[1]) };
    let Some(ty) = WeightType::from_ggml(w.type_) else { return false };
    let flat = |t: &ggml_tensor| t.ne[2] == 1 && t.ne[3] == 1;
    let f32_rows = |t: &ggml_tensor| t.type_ == GGML_TYPE_F32 && t.nb[0] == 4 && t.nb[1].is_multiple_of(4);
    let (k, n, m) = (w.ne[0] as usize, w.ne[1] as usize, x.ne[1] as usize);
    if !(flat(w) && flat(x) && flat(dst) && f32_rows(x) && f32_rows(dst))
        || k % ty.block_len() != 0
        || x.ne[0] as usize != k
        || dst.ne[0] as usize != n
        || dst.ne[1] as usize != m
        || w.nb[0] != ty.block_bytes()
    {
        return false;
    }
    let src = w.data as *const u8;
    // SAFETY: the weights are `n` rows of `nb[1]` bytes, the operands as checked above; ggml gives
    // each thread its `ith` and the threads write disjoint tiles.
    unsafe {
        let packed = lookup(ty, src, k, n, w.nb[1], ith == 0);
        let rows = Rows { x: x.data as *const f32, x_stride: x.nb[1] / 4, m, out: dst.data as *mut f32, out_stride: dst.nb[1] / 4 };
        mul_mat(path, &packed, src, rows, ith as usize, nth.max(1) as usize);
    }
    true
}
