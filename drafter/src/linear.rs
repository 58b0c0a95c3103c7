//! An inference-only linear layer for the few rows of a drafting pass: `y = x·Wᵀ (+ b)`.
//!
//! A drafting pass multiplies 9–17 rows (the round's new context tokens and the block) by every
//! weight matrix. candle's CPU gemm is built for large products: it repacks the weight matrix on
//! every call and, with so few rows, runs far below the CPU's peak. Here the weights are laid out
//! once, at load time, in column panels of [`NR`] outputs × K inputs, contiguous and cache-line
//! aligned ([`PackedLinear::new`]); a register-blocked kernel then streams each panel once per
//! block of up to [`MR`] rows, keeping `MR × NR` sums in vector registers. Panels are shared out
//! among candle's rayon threads.
//!
//! Every output is one chain of fused multiply-adds over k = 0..K in order, whatever the row
//! count, the row's place in a call, the thread split or the code path (AVX-512 or portable):
//! a row's result is bit-identical whether computed alone or among others, so context cached in
//! chunks equals context recomputed in one pass.
//!
//! No backward pass: training multiplies with candle's differentiable ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Output columns per panel: two AVX-512 registers of f32.
pub(crate) const NR: usize = 32;
/// Rows per register block: `MR × 2` accumulators plus the two weight vectors and a broadcast
/// fill 31 of the 32 vector registers.
pub(crate) const MR: usize = 14;
/// Multiply-adds below which a product runs on the calling thread: handing work to rayon costs
/// a few microseconds.
const PARALLEL_FROM: usize = 1 << 18;

/// One cache line of a panel: keeps panels 64-byte aligned for whole-register loads.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// An inference-only linear layer, `y = x·Wᵀ + b`, for products of a few rows (see the module
/// docs of `linear.rs`): the drafter's inference passes multiply with it. Public for benchmarks
/// that compare it with candle's matmul.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// Panel p holds `W[p·NR + j][k]` at `k·NR + j`, zero past the last output.
    panels: Arc<[Line]>,
    bias: Option<Arc<[f32]>>,
    inputs: usize,
    outputs: usize,
}

impl PackedLinear {
    /// Packs `weight` (out, in) and an optional `bias` (out), as f32, once: the layout the kernel
    /// streams.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        let w: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let panels = outputs.div_ceil(NR);
        let panel_lines = (inputs * NR / 16).max(1);
        let mut packed = vec![Line([0.0; 16]); panels * panel_lines];
        for (p, panel) in packed.chunks_exact_mut(panel_lines).enumerate() {
            for (k, lines) in panel.chunks_exact_mut(NR / 16).take(inputs).enumerate() {
                for (j, value) in lines.iter_mut().flat_map(|l| l.0.iter_mut()).enumerate() {
                    let out = p * NR + j;
                    if out < outputs {
                        *value = w[out * inputs + k];
                    }
                }
            }
        }
        let bias = match bias {
            Some(b) if b.dims1()? == outputs => Some(Arc::from(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
            Some(b) => bail!("bias of {} for {outputs} outputs", b.dims1()?),
            None => None,
        };
        Ok(Self { panels: Arc::from(packed), bias, inputs, outputs })
    }

    /// `x` (…, in), f32 → (…, out). Each row's result depends on that row only, to the bit.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// `y = x·Wᵀ + b` for `x` (rows × in, in > 0) into `y` (rows × out), both row-major.
    fn multiply(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k && y.len() >= rows * n, "multiply: buffers shorter than {rows} rows");
        let panels = n.div_ceil(NR);
        let out = OutPtr(y.as_mut_ptr());
        let tasks = if rows * n * k < PARALLEL_FROM { 1 } else { rayon::current_num_threads().min(panels) };
        let run = |task: usize| {
            for p in task * panels / tasks..(task + 1) * panels / tasks {
                self.panel(p, x, rows, &out);
            }
        };
        if tasks <= 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// Columns `p·NR..` of every row.
    fn panel(&self, p: usize, x: &[f32], rows: usize, out: &OutPtr) {
        let k = self.inputs;
        let line_len = k * NR / 16;
        let lines = &self.panels[p * line_len..(p + 1) * line_len];
        // SAFETY: `Line` is 16 f32 with no padding (size 64 = 16 × 4, align 64).
        let panel = unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), k * NR) };
        let cols = NR.min(self.outputs - p * NR);
        let mut tile = [[0f32; NR]; MR];
        let mut row = 0;
        while row < rows {
            let block = MR.min(rows - row);
            let x = &x[row * k..(row + block) * k];
            multiply_block(block, x, k, panel, &mut tile);
            for (r, sums) in tile.iter().take(block).enumerate() {
                // SAFETY: the row's columns p·NR..p·NR + cols lie inside y (row < rows,
                // p·NR + cols ≤ out), and each column belongs to one panel, each panel to one
                // task: no other thread touches them while this slice lives.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add((row + r) * self.outputs + p * NR), cols) };
                match &self.bias {
                    Some(b) => dst.iter_mut().zip(sums).zip(&b[p * NR..]).for_each(|((d, s), b)| *d = s + b),
                    None => dst.copy_from_slice(&sums[..cols]),
                }
            }
            row += block;
        }
    }
}

/// The output of a product, written by several threads at disjoint columns.
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint elements (see `PackedLinear::panel`), and the product waits for
// them all before the buffer is used again.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Sums of `rows` (≤ MR) rows of `x` (rows × k) times one panel (k × NR) into `tile`.
fn multiply_block(rows: usize, x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; NR]; MR]) {
    macro_rules! by_rows {
        ($kernel:ident) => {
            match rows {
                1 => $kernel::<1>(x, k, panel, tile),
                2 => $kernel::<2>(x, k, panel, tile),
                3 => $kernel::<3>(x, k, panel, tile),
                4 => $kernel::<4>(x, k, panel, tile),
                5 => $kernel::<5>(x, k, panel, tile),
                6 => $kernel::<6>(x, k, panel, tile),
                7 => $kernel::<7>(x, k, panel, tile),
                8 => $kernel::<8>(x, k, panel, tile),
                9 => $kernel::<9>(x, k, panel, tile),
                10 => $kernel::<10>(x, k, panel, tile),
                11 => $kernel::<11>(x, k, panel, tile),
                12 => $kernel::<12>(x, k, panel, tile),
                13 => $kernel::<13>(x, k, panel, tile),
                _ => $kernel::<MR>(x, k, panel, tile),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return by_rows!(block_avx512);
    }
    by_rows!(block_portable)
}

/// Portable kernel: the same fused multiply-adds in the same order as [`block_avx512`].
fn block_portable<const R: usize>(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; NR]; MR]) {
    let mut acc = [[0f32; NR]; R];
    for (kk, w) in panel.chunks_exact(NR).take(k).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[r * k + kk];
            for (a, &w) in acc.iter_mut().zip(w) {
                *a = xv.mul_add(w, *a);
            }
        }
    }
    tile[..R].copy_from_slice(&acc);
}

/// AVX-512 kernel; only called where the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
fn block_avx512<const R: usize>(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; NR]; MR]) {
    assert!(x.len() >= R * k && panel.len() >= k * NR, "block_avx512: inputs shorter than the block");
    // SAFETY: the caller checked AVX-512F; the lengths were checked above.
    unsafe { avx512::block::<R>(x, k, panel, tile) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _MM_HINT_T1, _mm_prefetch, _mm512_fmadd_ps, _mm512_load_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    use super::{MR, NR};

    /// k steps (8 KiB) ahead that the panel is prefetched into L2. A pass streams all 50 MB of
    /// weights from L3 or memory; without the hint loading and multiplying took turns (cold
    /// weights, 13 rows: 220 → ~140 µs for 384 → 1024 on one core; 32–96 steps measured alike).
    const PREFETCH: usize = 64;

    /// # Safety
    /// AVX-512F present; `x` holds R × k values, `panel` k × NR values from a 64-byte boundary.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const R: usize>(x: &[f32], k: usize, panel: &[f32], tile: &mut [[f32; NR]; MR]) {
        let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
        let (w, xp) = (panel.as_ptr(), x.as_ptr());
        for kk in 0..k {
            // SAFETY: kk < k, so both loads lie in the panel, 64-byte aligned (NR = 32 floats).
            let (w0, w1) = unsafe { (_mm512_load_ps(w.add(kk * NR)), _mm512_load_ps(w.add(kk * NR + 16))) };
            let ahead = w.wrapping_add((kk + PREFETCH) * NR);
            _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(16).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < R and kk < k: inside x.
                let xv = _mm512_set1_ps(unsafe { *xp.add(r * k + kk) });
                acc[0] = _mm512_fmadd_ps(xv, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(xv, w1, acc[1]);
            }
        }
        for (acc, out) in acc.iter().zip(tile.iter_mut()) {
            // SAFETY: a tile row holds NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(out.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "duet-packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { bail!("{} takes f32 tensors", self.name()) };
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("{} takes contiguous tensors", self.name()) };
        let x = &data[start..end];
        let dims = layout.dims();
        if dims.last().copied() != Some(self.inputs) {
            bail!("{}: input width {:?}, weights take {}", self.name(), dims.last(), self.inputs);
        }
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut y = vec![0f32; rows * self.outputs];
        if self.inputs > 0 {
            self.multiply(x, rows, &mut y);
        } else if let Some(b) = &self.bias
            && self.outputs > 0
        {
            y.chunks_exact_mut(self.outputs).for_each(|row| row.copy_from_slice(b));
        }
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.outputs;
        }
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(rng: &mut StdRng, shape: (usize, usize), scale: f32) -> Tensor {
        let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
    }

    /// Weights scaled so that outputs are of order 1 and a tolerance in absolute terms is tight.
    fn layer(rng: &mut StdRng, outputs: usize, inputs: usize, bias: bool) -> (Tensor, Option<Tensor>) {
        let w = random(rng, (outputs, inputs), 1.7 / (inputs as f32).sqrt());
        let b = bias.then(|| random(rng, (1, outputs), 1.0).flatten_all().expect("bias"));
        (w, b)
    }

    #[test]
    fn products_match_candle_on_odd_shapes_and_every_row_count() {
        let mut rng = StdRng::seed_from_u64(11);
        let shapes = [(1, 1), (7, 3), (33, 31), (64, 65), (100, 384), (130, 17), (384, 1024), (1000, 97)];
        for (i, &(outputs, inputs)) in shapes.iter().enumerate() {
            let (w, b) = layer(&mut rng, outputs, inputs, i % 2 == 1);
            let packed = PackedLinear::new(&w, b.as_ref()).expect("pack");
            for rows in (1..=64).step_by(if inputs > 200 { 7 } else { 1 }) {
                let x = random(&mut rng, (rows, inputs), 1.0);
                let ours = packed.forward(&x).expect("ours");
                let theirs = x.matmul(&w.t().expect("t")).expect("matmul");
                let theirs = match &b {
                    Some(b) => theirs.broadcast_add(b).expect("bias"),
                    None => theirs,
                };
                let diff = crate::testing::max_abs_diff(&ours, &theirs);
                assert!(diff < 2e-5, "{rows}×{inputs} · {inputs}×{outputs}: off by {diff}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_anywhere_in_a_batch() {
        let mut rng = StdRng::seed_from_u64(5);
        // Wide enough that a batch is split among threads while a single row is not.
        for (outputs, inputs) in [(45, 29), (2100, 160)] {
            let (w, b) = layer(&mut rng, outputs, inputs, true);
            let packed = PackedLinear::new(&w, b.as_ref()).expect("pack");
            let x = random(&mut rng, (64, inputs), 1.0);
            let batch = packed.forward(&x).expect("batch").to_vec2::<f32>().expect("rows");
            for (start, len) in [(0, 64), (3, 17), (13, 1), (50, 14), (63, 1), (20, 29)] {
                let part = packed.forward(&x.narrow(0, start, len).expect("rows")).expect("part");
                let part = part.to_vec2::<f32>().expect("rows");
                for (r, row) in part.iter().enumerate() {
                    let same = row.iter().zip(&batch[start + r]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "row {} differs computed among rows {start}..{}", start + r, start + len);
                }
            }
        }
    }

    #[test]
    fn the_portable_kernel_gives_the_bits_of_the_vector_kernel() {
        let mut rng = StdRng::seed_from_u64(8);
        let (k, rows) = (37, 5);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut panel = vec![Line([0.0; 16]); k * NR / 16];
        panel.iter_mut().flat_map(|l| l.0.iter_mut()).for_each(|v| *v = rng.random_range(-1.0f32..1.0));
        // SAFETY: as in `PackedLinear::panel`.
        let panel = unsafe { std::slice::from_raw_parts(panel.as_ptr().cast::<f32>(), k * NR) };
        let mut portable = [[0f32; NR]; MR];
        block_portable::<5>(&x, k, panel, &mut portable);
        let mut reference = [[0f32; NR]; MR];
        for (r, out) in reference.iter_mut().take(rows).enumerate() {
            for (j, out) in out.iter_mut().enumerate() {
                *out = (0..k).fold(0f32, |acc, kk| x[r * k + kk].mul_add(panel[kk * NR + j], acc));
            }
        }
        assert_eq!(portable, reference);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let mut vector = [[0f32; NR]; MR];
            block_avx512::<5>(&x, k, panel, &mut vector);
            assert_eq!(vector, reference);
        }
    }

    #[test]
    fn a_layer_without_inputs_gives_its_bias() {
        let w = Tensor::zeros((3, 0), candle_core::DType::F32, &Device::Cpu).expect("w");
        let b = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).expect("b");
        let packed = PackedLinear::new(&w, Some(&b)).expect("pack");
        let x = Tensor::zeros((2, 0), candle_core::DType::F32, &Device::Cpu).expect("x");
        let y = packed.forward(&x).expect("forward").to_vec2::<f32>().expect("rows");
        assert_eq!(y, vec![vec![1.0, 2.0, 3.0]; 2]);
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let mut rng = StdRng::seed_from_u64(1);
        let (w, _) = layer(&mut rng, 8, 6, false);
        let packed = PackedLinear::new(&w, None).expect("pack");
        assert!(packed.forward(&random(&mut rng, (2, 5), 1.0)).is_err());
    }
}
