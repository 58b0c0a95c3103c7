//! Inference kernels written for the CPU: a vectorisable `exp`, and the two element-wise steps
//! that call it per hidden unit or per attention score — softmax over the last dimension and
//! SwiGLU's `silu(gate) * up`. candle's versions call libm's `expf` one value at a time, which took
//! a tenth of a drafting pass. No backward pass: training uses candle's differentiable ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

/// `e^x` for `x <= 0` to about 2 ulp, without branches so that loops over it vectorise.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below about -87.3 e^x leaves the normal f32 range; such weights (and -inf) become 0.
    const LOWEST: f32 = -87.3;
    let underflow = x < LOWEST;
    let x = x.clamp(LOWEST, 0.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf).
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5e-1);
    let p = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow { 0.0 } else { p * scale }
}

/// Lanes of the chunked reductions below: wide enough for the compiler to keep a vector register
/// of partial results (reducing one value at a time is bound by the latency of each step).
const LANES: usize = 16;

/// Largest value of a row.
pub(crate) fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of a row, in a fixed order (the same row always gives the same sum).
pub(crate) fn sum_of(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `x * sigmoid(x)`, through `e^-|x|` so the exponential never overflows.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = fast_exp(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    x * sigmoid
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op} takes f32 tensors") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op} takes contiguous tensors"),
    }
}

/// Softmax over the last dimension of `scale * x`.
struct SoftmaxLastDim {
    scale: f32,
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "duet-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
            let max = max_of(s);
            for (d, &s) in d.iter_mut().zip(s) {
                *d = fast_exp((s - max) * self.scale);
            }
            let inv = 1.0 / sum_of(d);
            d.iter_mut().for_each(|v| *v *= inv);
        }
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Softmax over the last dimension of `scale * x` (an f32 tensor; `scale > 0`), the attention
/// scale folded in to spare a pass over the scores.
pub(crate) fn scaled_softmax_last_dim(x: &Tensor, scale: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim { scale })
}

/// SwiGLU's `silu(gate) * up` on a tensor whose last dimension holds gate and up side by side.
struct SiluMul;

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "duet-silu-mul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let dims = layout.dims();
        let width = dims.last().copied().unwrap_or(0);
        if width % 2 != 0 {
            bail!("{} needs an even last dimension, got {width}", self.name());
        }
        let half = width / 2;
        let mut dst = Vec::with_capacity(src.len() / 2);
        for row in src.chunks_exact(width) {
            let (gate, up) = row.split_at(half);
            dst.extend(gate.iter().zip(up).map(|(&g, &u)| silu(g) * u));
        }
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = half;
        }
        Ok((CpuStorage::F32(dst), Shape::from(out_dims)))
    }
}

/// `silu(gate) * up` for `gate_up` = gate and up concatenated on the last dimension.
pub(crate) fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.contiguous()?.apply_op1_no_bwd(&SiluMul)
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device};

    use super::*;

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_exp() {
        for i in 0..=100_000 {
            let x = -87.3 * i as f32 / 100_000.0;
            let (fast, exact) = (fast_exp(x), x.exp());
            assert!((fast - exact).abs() <= 4.0 * f32::EPSILON * exact, "x = {x}: {fast} vs {exact}");
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn kernels_match_candle() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (3, 5, 40), &dev).expect("randn") * 6.0).expect("scale");
        let ours = scaled_softmax_last_dim(&x, 0.5).expect("ours");
        let theirs = candle_nn::ops::softmax_last_dim(&(&x * 0.5).expect("scale")).expect("theirs");
        assert!(crate::testing::max_abs_diff(&ours, &theirs) < 1e-6);

        let ours = silu_mul(&x).expect("ours");
        let (gate, up) = (x.narrow(D::Minus1, 0, 20).expect("g"), x.narrow(D::Minus1, 20, 20).expect("u"));
        let theirs = (gate.silu().expect("silu") * up).expect("mul");
        assert!(crate::testing::max_abs_diff(&ours, &theirs) < 1e-4);
    }
}
