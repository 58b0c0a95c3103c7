//! Duet's batch-invariant quantised matrix products: the CPU kernels that verify a block of drafts.
//!
//! Speculative decoding is lossless only if a token's logits are the same bits whether the verifier
//! computes it alone or inside a block of drafts. llama.cpp's CPU kernels are not built for that: a
//! batch goes to other kernels than a single row (repacked gemm for groups of 4 or 16, gemv for the
//! rest, tiled kernels from 8 rows), each with its own float summation order. Switching those off
//! leaves llama.cpp's per-row dot product, which is invariant but reloads the weights for every row.
//!
//! These kernels are invariant by construction and share the weights across rows. A quantised dot
//! product is integer sums (exact, so their order is free) scaled by floats once a block; the kernels
//! give each (token row, output) pair its own float accumulator that takes the same fused
//! multiply-adds, block after block, whatever the batch. A row's activations are quantised on their
//! own ([`activation`]). Threads split the outputs, never a sum. So each output is the same bits for
//! any row count, any position of the row in the batch, any thread count and either instruction set
//! path — and equal, bit for bit, to the scalar reference ([`reference`]), which the tests check.
//!
//! Sharing the weights: they are re-laid once, on first use, in tiles of 16 outputs with one output
//! per 32-bit lane ([`pack`], [`packed`]), so one load of weights serves every row of the batch and a
//! VNNI dot product adds 64 products at once. Details and costs: `verifier/KERNELS.md`.
//!
//! llama.cpp calls in through a hook at the top of its CPU matrix multiplication (the only change
//! to llama.cpp, `verifier/ggml/mul-mat-hook.cmake`); products it does not recognise stay with
//! llama.cpp's own (invariant) per-row kernels.

pub mod activation;
mod avx2;
mod avx512;
pub mod blocks;
mod hook;
pub mod pack;
pub mod packed;
pub mod reference;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use activation::{Act0, ActK, quantize_row_0, quantize_row_k};
pub use blocks::WeightType;
pub use hook::{install, selected};
use pack::TILE;
use packed::Packed;

/// The instruction-set path of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// AVX-512 F/BW with VNNI (Zen 4, Ice Lake and later).
    Avx512Vnni,
    /// AVX2 with FMA and F16C.
    Avx2,
}

impl Path {
    /// The best path this CPU has.
    pub fn detect() -> Option<Path> {
        if Self::Avx512Vnni.available() {
            Some(Self::Avx512Vnni)
        } else if Self::Avx2.available() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Self::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Self::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
        }
    }

    /// The name `DUET_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512",
            Self::Avx2 => "avx2",
        }
    }
}

/// The most token rows a kernel call takes at once (the weights are unpacked once for all of them);
/// each family's own limit is [`Act::MAX_ROWS`].
const ROWS: usize = 6;

type Kernel<A, const R: usize> = unsafe fn(*const u8, usize, &[*const A; R], &mut [[f32; 16]; R]);

/// Runs `f` on the first `R` rows of `acts`.
///
/// # Safety
/// As `f`'s.
unsafe fn call<A, const R: usize>(f: Kernel<A, R>, tile: *const u8, nb: usize, acts: &[*const A], out: &mut [[f32; 16]; ROWS]) {
    let (Ok(a), Ok(o)) = (<&[*const A; R]>::try_from(&acts[..R]), <&mut [[f32; 16]; R]>::try_from(&mut out[..R])) else {
        unreachable!("R ≤ ROWS rows are given")
    };
    // SAFETY: the caller's contract.
    unsafe { f(tile, nb, a, o) }
}

macro_rules! by_rows {
    ($module:ident :: $kernel:ident, $act:ty, $rows:expr, $tile:expr, $nb:expr, $acts:expr, $out:expr) => {
        match $rows {
            1 => call::<$act, 1>($module::$kernel::<1>, $tile, $nb, $acts, $out),
            2 => call::<$act, 2>($module::$kernel::<2>, $tile, $nb, $acts, $out),
            3 => call::<$act, 3>($module::$kernel::<3>, $tile, $nb, $acts, $out),
            4 => call::<$act, 4>($module::$kernel::<4>, $tile, $nb, $acts, $out),
            5 => call::<$act, 5>($module::$kernel::<5>, $tile, $nb, $acts, $out),
            _ => call::<$act, 6>($module::$kernel::<6>, $tile, $nb, $acts, $out),
        }
    };
}

/// Where a product reads its activations and writes its outputs: `m` rows of `k` floats `x_stride`
/// floats apart, `m` rows of `n` floats `out_stride` apart.
#[derive(Clone, Copy)]
pub struct Rows {
    pub x: *const f32,
    pub x_stride: usize,
    pub m: usize,
    pub out: *mut f32,
    pub out_stride: usize,
}

/// This thread's share (`ith` of `nth`: a contiguous range of tiles) of the product of `rows` with
/// the weights whose packed copy is `packed` and whose llama.cpp bytes are at `src`.
///
/// # Safety
/// `path` is available; `src` is the tensor `packed` was made for; `rows` describes readable and
/// writable memory of its sizes; no other thread writes the same outputs.
pub unsafe fn mul_mat(path: Path, packed: &Packed, src: *const u8, rows: Rows, ith: usize, nth: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        if packed.ty.is_k_quant() {
            ActK::buffer(|acts| quantize_and_run(path, packed, src, rows, ith, nth, acts))
        } else {
            Act0::buffer(|acts| quantize_and_run(path, packed, src, rows, ith, nth, acts))
        }
    }
}

/// Quantises every row into `acts`, then runs this thread's tiles. Each thread quantises all rows
/// itself: the rows are few or the product is long, and so no thread waits for another's.
///
/// # Safety
/// As [`mul_mat`]'s.
unsafe fn quantize_and_run<A: Act>(path: Path, packed: &Packed, src: *const u8, rows: Rows, ith: usize, nth: usize, acts: &mut Vec<A>) {
    let nb = packed.nblocks();
    acts.resize(rows.m * nb, A::ZERO);
    for r in 0..rows.m {
        // SAFETY: the caller's contract on `rows`.
        let x = unsafe { std::slice::from_raw_parts(rows.x.add(r * rows.x_stride), packed.k) };
        A::quantize(x, &mut acts[r * nb..(r + 1) * nb]);
    }
    // SAFETY: the caller's contract.
    unsafe { tiles(path, packed, src, rows, ith, nth, acts) }
}

/// Activation blocks a kernel family takes.
trait Act: Sized + Copy + 'static {
    const ZERO: Self;
    /// Rows a kernel call of this family takes at most: past it the per-row state no longer fits
    /// the 32 vector registers and spills. Per row, in the caches (`cargo bench -p duet-verifier
    /// --bench kernels`), the K-quant kernels are fastest at 3–4 rows a call (8 rows: 15–20%
    /// slower), the 32-wide ones at 4–6.
    const MAX_ROWS: usize;
    /// Quantises one row into its blocks.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// This thread's reusable activation buffer.
    fn buffer<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
    /// # Safety
    /// As [`mul_mat`]'s.
    unsafe fn run(path: Path, ty: WeightType, rows: usize, tile: *const u8, nb: usize, acts: &[*const Self], out: &mut [[f32; 16]; ROWS]);
}

thread_local! {
    static ACT_K: RefCell<Vec<ActK>> = const { RefCell::new(Vec::new()) };
    static ACT_0: RefCell<Vec<Act0>> = const { RefCell::new(Vec::new()) };
}

impl Act for ActK {
    const ZERO: Self = ActK::ZERO;
    const MAX_ROWS: usize = 4;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_k(x, out)
    }
    fn buffer<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
        ACT_K.with_borrow_mut(f)
    }
    unsafe fn run(path: Path, ty: WeightType, rows: usize, tile: *const u8, nb: usize, acts: &[*const Self], out: &mut [[f32; 16]; ROWS]) {
        // SAFETY: the caller's contract.
        unsafe {
            match (path, ty) {
                (Path::Avx512Vnni, WeightType::Q4K) => by_rows!(avx512::q4k, ActK, rows, tile, nb, acts, out),
                (Path::Avx512Vnni, _) => by_rows!(avx512::q6k, ActK, rows, tile, nb, acts, out),
                (Path::Avx2, WeightType::Q4K) => by_rows!(avx2::q4k, ActK, rows, tile, nb, acts, out),
                (Path::Avx2, _) => by_rows!(avx2::q6k, ActK, rows, tile, nb, acts, out),
            }
        }
    }
}

impl Act for Act0 {
    const ZERO: Self = Act0::ZERO;
    const MAX_ROWS: usize = 6;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_0(x, out)
    }
    fn buffer<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
        ACT_0.with_borrow_mut(f)
    }
    unsafe fn run(path: Path, ty: WeightType, rows: usize, tile: *const u8, nb: usize, acts: &[*const Self], out: &mut [[f32; 16]; ROWS]) {
        // SAFETY: the caller's contract.
        unsafe {
            match (path, ty) {
                (Path::Avx512Vnni, WeightType::Q8_0) => by_rows!(avx512::q8_0, Act0, rows, tile, nb, acts, out),
                (Path::Avx512Vnni, _) => by_rows!(avx512::q5_0, Act0, rows, tile, nb, acts, out),
                (Path::Avx2, WeightType::Q8_0) => by_rows!(avx2::q8_0, Act0, rows, tile, nb, acts, out),
                (Path::Avx2, _) => by_rows!(avx2::q5_0, Act0, rows, tile, nb, acts, out),
            }
        }
    }
}

/// # Safety
/// As [`mul_mat`]'s; `acts` holds `rows.m` rows of `packed.nblocks()` blocks.
unsafe fn tiles<A: Act>(path: Path, packed: &Packed, src: *const u8, rows: Rows, ith: usize, nth: usize, acts: &[A]) {
    let nb = packed.nblocks();
    let tiles = packed.tiles();
    let (first, end) = (tiles * ith / nth, tiles * (ith + 1) / nth);
    let mut out = [[0f32; 16]; ROWS];
    for t in first..end {
        // SAFETY: the caller's contract on `src`.
        let tile = unsafe { packed.tile(t, src) };
        let o0 = t * TILE;
        let width = TILE.min(packed.n - o0);
        // The rows in calls of nearly equal size (9 rows: 3 + 3 + 3, not 4 + 4 + 1): a row alone in a
        // call shares the unpacking of the weights with no other and costs a third more.
        let calls = rows.m.div_ceil(A::MAX_ROWS);
        let mut g = 0;
        for c in 0..calls {
            let r = rows.m / calls + usize::from(c < rows.m % calls);
            let mut ptrs = [std::ptr::null::<A>(); ROWS];
            for (i, p) in ptrs.iter_mut().take(r).enumerate() {
                *p = acts[(g + i) * nb..].as_ptr();
            }
            // SAFETY: the caller's contract; the pointers are `r` rows of `nb` blocks.
            unsafe {
                A::run(path, packed.ty, r, tile, nb, &ptrs[..r], &mut out);
                for (i, o) in out.iter().take(r).enumerate() {
                    std::ptr::copy_nonoverlapping(o.as_ptr(), rows.out.add((g + i) * rows.out_stride + o0), width);
                }
            }
            g += r;
        }
    }
}
