//! The small building blocks of a Qwen2/Llama decoder: RMSNorm, rotary position embedding (RoPE)
//! and the SwiGLU feed-forward layer.
//!
//! Each has two code paths chosen by [`ForwardMode`]: candle's fused kernels for inference, and
//! plain tensor formulas for training, because candle's fused `rms_norm`, `softmax_last_dim` and
//! `rope` kernels have no backward pass (gradients would silently stop there).

use candle_core::{D, Device, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};

use crate::error::Result;
use crate::linear::PackedLinear;

/// Which kernels a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// Fused kernels without a backward pass: fast, for drafting.
    #[default]
    Inference,
    /// Only operations that candle can differentiate: for a training loop.
    Training,
}

/// Root-mean-square normalisation with a learned scale (Zhang & Sennrich 2019).
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Reads `{vb}.weight`; a fresh variable starts at 1.
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Inference => candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?,
            ForwardMode::Training => {
                let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?
            }
        })
    }

    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Rotary position embedding (Su et al. 2021) for a run of consecutive positions, in the
/// "rotate half" layout of Qwen2 and Llama checkpoints.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// (len, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Angles for positions `start..start + len`. Computed per call: a block needs a few hundred
    /// values, cheaper than keeping tables sized for the longest context.
    pub(crate) fn new(start: usize, len: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half).map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }

    /// Rotates `x` of shape (batch, len, heads, head_dim).
    pub(crate) fn apply(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Inference => candle_nn::rotary_emb::rope_thd(&x.contiguous()?, &self.cos, &self.sin)?,
            ForwardMode::Training => {
                let (_, len, _, head_dim) = x.dims4()?;
                let half = head_dim / 2;
                let cos = Tensor::cat(&[&self.cos, &self.cos], D::Minus1)?.reshape((1, len, 1, head_dim))?;
                let sin = Tensor::cat(&[&self.sin, &self.sin], D::Minus1)?.reshape((1, len, 1, head_dim))?;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?
            }
        })
    }
}

/// One or more linear layers fused side by side and stored for inference.
///
/// candle keeps a `Linear` weight as `(out, in)` and multiplies by its transpose through a gemm
/// that repacks the whole weight matrix on every call, costing more than the product itself for
/// the few rows of a drafting pass. The fused weights are packed once into the layout of the
/// drafter's own kernel ([`PackedLinear`]), which is also batch-invariant: a row's outputs do not
/// depend on the other rows of the call. Fusing (q, k, v; gate, up) makes one pass over the input
/// rows and one hand-off to the threads instead of two or three.
#[derive(Debug, Clone)]
pub(crate) struct FastLinear {
    packed: PackedLinear,
}

impl FastLinear {
    /// Fuses `linears` (same input width) into one product whose output is their outputs side by
    /// side. Either all of them have a bias or none.
    pub(crate) fn fuse(linears: &[&Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = linears.iter().map(|l| l.weight()).collect();
        let weight = Tensor::cat(&weights, 0)?; // (out, in)
        let biases: Option<Vec<&Tensor>> = linears.iter().map(|l| l.bias()).collect();
        let bias = match biases {
            Some(b) if !b.is_empty() => Some(Tensor::cat(&b, 0)?),
            _ => None,
        };
        Ok(Self { packed: PackedLinear::new(&weight, bias.as_ref())? })
    }

    /// `x` (batch, len, in) → (batch, len, out).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.packed.forward(x)?)
    }
}

/// A linear layer with an optional inference copy: training (and models over a `VarMap`, whose
/// weights change under the optimizer) use the `Linear`; inference uses the fused transposed copy.
pub(crate) fn linear_forward(x: &Tensor, linear: &Linear, fast: Option<&FastLinear>, mode: ForwardMode) -> Result<Tensor> {
    match (mode, fast) {
        (ForwardMode::Inference, Some(fast)) => fast.forward(x),
        _ => Ok(linear.forward(x)?),
    }
}

/// The SwiGLU feed-forward layer (Shazeer 2020): `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
    /// Inference copies: gate and up fused, down.
    fast: Option<(FastLinear, FastLinear)>,
}

impl Mlp {
    pub(crate) fn new(hidden: usize, intermediate: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate_proj: candle_nn::linear_no_bias(hidden, intermediate, vb.pp("gate_proj"))?,
            up_proj: candle_nn::linear_no_bias(hidden, intermediate, vb.pp("up_proj"))?,
            down_proj: candle_nn::linear_no_bias(intermediate, hidden, vb.pp("down_proj"))?,
            fast: None,
        })
    }

    /// Builds the inference copies of the weights.
    pub(crate) fn prepare_inference(&mut self) -> Result<()> {
        self.fast = Some((
            FastLinear::fuse(&[&self.gate_proj, &self.up_proj])?,
            FastLinear::fuse(&[&self.down_proj])?,
        ));
        Ok(())
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        match (mode, &self.fast) {
            (ForwardMode::Inference, Some((gate_up, down))) => {
                down.forward(&crate::kernels::silu_mul(&gate_up.forward(x)?)?)
            }
            _ => {
                let gate = self.gate_proj.forward(x)?.silu()?;
                Ok(self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)?)
            }
        }
    }
}

/// An additive attention mask of shape (rows, prefix + rows) for `rows` new positions after
/// `prefix` cached ones: each new position sees the whole prefix and the new positions up to
/// itself (causal). This is how context tokens enter the cache.
pub(crate) fn causal_mask(prefix: usize, rows: usize, device: &Device) -> Result<Tensor> {
    let cols = prefix + rows;
    let data: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| if c <= prefix + r { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), device)?)
}

/// An additive attention mask of shape (context + rest, prefix + context + rest) for a pass that
/// caches `context` new tokens after `prefix` cached ones and runs `rest` positions (pending tokens
/// and the block) behind them: the context rows are causal, as [`causal_mask`] makes them, and
/// never see the rest; the rest sees everything. This lets a draft pass cache a round's new tokens.
pub(crate) fn context_then_block_mask(prefix: usize, context: usize, rest: usize, device: &Device) -> Result<Tensor> {
    let cols = prefix + context + rest;
    let data: Vec<f32> = (0..context + rest)
        .flat_map(|r| (0..cols).map(move |c| if r >= context || c <= prefix + r { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(data, (context + rest, cols), device)?)
}

/// The block-diffusion mask (BD3-LM) over `context + block` positions, shape (n, n): context
/// positions are causal and never see the block; block positions see the whole context and every
/// block position, in both directions.
pub(crate) fn block_diffusion_mask(context: usize, block: usize, device: &Device) -> Result<Tensor> {
    let n = context + block;
    let data: Vec<f32> = (0..n)
        .flat_map(|r| (0..n).map(move |c| if r >= context || c <= r { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(data, (n, n), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()).expect("same shapes")
    }

    #[test]
    fn training_formulas_match_the_fused_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).expect("randn");
        let rope = Rope::new(5, 3, 8, 10_000.0, &dev).expect("rope");
        let fast = rope.apply(&x, ForwardMode::Inference).expect("fast");
        let slow = rope.apply(&x, ForwardMode::Training).expect("slow");
        assert!(max_abs_diff(&fast, &slow) < 1e-5);

        let weight = Tensor::randn(0f32, 1.0, 8, &dev).expect("randn");
        let norm = RmsNorm { weight, eps: 1e-6 };
        let fast = norm.forward(&x, ForwardMode::Inference).expect("fast");
        let slow = norm.forward(&x, ForwardMode::Training).expect("slow");
        assert!(max_abs_diff(&fast, &slow) < 1e-5);
    }

    #[test]
    fn fused_inference_weights_compute_what_the_linear_layers_compute() {
        let dev = Device::Cpu;
        let linear = |out: usize, bias: bool| {
            let w = Tensor::randn(0f32, 1.0, (out, 8), &dev).expect("w");
            Linear::new(w, bias.then(|| Tensor::randn(0f32, 1.0, out, &dev).expect("b")))
        };
        let x = Tensor::randn(0f32, 1.0, (1, 5, 8), &dev).expect("x");
        // A narrow pair fused side by side, and a layer wider than one panel of the kernel.
        for parts in [vec![linear(6, true), linear(3, true)], vec![linear(crate::linear::NR * 3 + 5, false)]] {
            let refs: Vec<&Linear> = parts.iter().collect();
            let fast = FastLinear::fuse(&refs).expect("fuse").forward(&x).expect("fast");
            let plain: Vec<Tensor> = parts.iter().map(|l| l.forward(&x).expect("plain")).collect();
            let plain = Tensor::cat(&plain, D::Minus1).expect("cat");
            assert!(max_abs_diff(&fast, &plain) < 1e-4);
        }
    }

    #[test]
    fn context_never_sees_the_block_and_block_positions_see_each_other() {
        let mask = block_diffusion_mask(3, 2, &Device::Cpu).expect("mask").to_vec2::<f32>().expect("2d");
        let visible = |r: usize, c: usize| mask[r][c] == 0.0;
        for r in 0..3 {
            for c in 0..5 {
                assert_eq!(visible(r, c), c <= r, "context row {r}, column {c}");
            }
        }
        for r in 3..5 {
            assert!((0..5).all(|c| visible(r, c)), "block row {r} sees everything");
        }
    }

    #[test]
    fn deferred_context_rows_are_causal_and_the_block_sees_everything() {
        let mask = context_then_block_mask(2, 3, 2, &Device::Cpu).expect("mask").to_vec2::<f32>().expect("2d");
        let causal = causal_mask(2, 3, &Device::Cpu).expect("mask").to_vec2::<f32>().expect("2d");
        for r in 0..3 {
            assert_eq!(mask[r][..5], causal[r][..], "context row {r} as when cached alone");
            assert!(mask[r][5..].iter().all(|v| v.is_infinite()), "context row {r} never sees the block");
        }
        assert!(mask[3..].iter().all(|row| row.iter().all(|v| *v == 0.0)), "block rows see everything");
    }

    #[test]
    fn new_context_rows_see_the_prefix_and_earlier_rows_only() {
        let mask = causal_mask(2, 3, &Device::Cpu).expect("mask").to_vec2::<f32>().expect("2d");
        assert_eq!(mask[0].iter().filter(|v| **v == 0.0).count(), 3);
        assert_eq!(mask[2].iter().filter(|v| **v == 0.0).count(), 5);
        assert!(mask[0][3].is_infinite());
    }
}
