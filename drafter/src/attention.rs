//! Grouped-query self-attention (Ainslie et al. 2023) with rotary positions, as in Qwen2/Llama.
//!
//! The projections are split so that keys and values can be made on their own: context positions
//! only ever contribute keys and values (they are cached), and in DFlash mode they come from the
//! projected verifier features instead of the drafter's own hidden states. The query heads that
//! share a key/value head are folded into the rows of one matrix product, so keys and values are
//! never repeated in memory.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use crate::config::DrafterConfig;
use crate::error::Result;
use crate::layers::{FastLinear, ForwardMode, RmsNorm, Rope, linear_forward};

/// One layer's attention projections.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    /// Inference copies: q, k and v fused; k and v fused (context keys); o.
    fast: Option<(FastLinear, FastLinear, FastLinear)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub(crate) fn new(config: &DrafterConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim());
        let (num_heads, num_kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let bias = config.attention_bias();
        let (q_norm, k_norm) = if config.qk_norm() {
            (
                Some(RmsNorm::new(head_dim, config.rms_norm_eps(), vb.pp("q_norm"))?),
                Some(RmsNorm::new(head_dim, config.rms_norm_eps(), vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: candle_nn::linear_b(hidden, num_heads * head_dim, bias, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear_b(hidden, num_kv_heads * head_dim, bias, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear_b(hidden, num_kv_heads * head_dim, bias, vb.pp("v_proj"))?,
            o_proj: candle_nn::linear_no_bias(num_heads * head_dim, hidden, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            fast: None,
            num_heads,
            num_kv_heads,
            head_dim,
        })
    }

    /// Builds the inference copies of the weights.
    pub(crate) fn prepare_inference(&mut self) -> Result<()> {
        self.fast = Some((
            FastLinear::fuse(&[&self.q_proj, &self.k_proj, &self.v_proj])?,
            FastLinear::fuse(&[&self.k_proj, &self.v_proj])?,
            FastLinear::fuse(&[&self.o_proj])?,
        ));
        Ok(())
    }

    /// Rotated queries, keys and values of `x` (batch, len, hidden): (batch, len, heads, head_dim)
    /// for queries, (batch, len, kv_heads, head_dim) for keys and values.
    pub(crate) fn queries_keys_values(
        &self,
        x: &Tensor,
        rope: &Rope,
        mode: ForwardMode,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = match (mode, &self.fast) {
            (ForwardMode::Inference, Some((qkv, _, _))) => {
                let qkv = qkv.forward(x)?;
                let (q_width, kv_width) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
                (
                    qkv.narrow(D::Minus1, 0, q_width)?,
                    qkv.narrow(D::Minus1, q_width, kv_width)?,
                    qkv.narrow(D::Minus1, q_width + kv_width, kv_width)?,
                )
            }
            _ => (self.q_proj.forward(x)?, self.k_proj.forward(x)?, self.v_proj.forward(x)?),
        };
        let q = self.heads(&q, self.num_heads, self.q_norm.as_ref(), mode)?;
        let k = self.heads(&k, self.num_kv_heads, self.k_norm.as_ref(), mode)?;
        let v = self.heads(&v, self.num_kv_heads, None, mode)?;
        Ok((rope.apply(&q, mode)?, rope.apply(&k, mode)?, v))
    }

    /// Rotated keys and values of `x` (batch, len, hidden): each (batch, len, kv_heads, head_dim).
    pub(crate) fn keys_values(&self, x: &Tensor, rope: &Rope, mode: ForwardMode) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (mode, &self.fast) {
            (ForwardMode::Inference, Some((_, kv, _))) => {
                let kv = kv.forward(x)?;
                let width = self.num_kv_heads * self.head_dim;
                (kv.narrow(D::Minus1, 0, width)?, kv.narrow(D::Minus1, width, width)?)
            }
            _ => (self.k_proj.forward(x)?, self.v_proj.forward(x)?),
        };
        let k = self.heads(&k, self.num_kv_heads, self.k_norm.as_ref(), mode)?;
        let v = self.heads(&v, self.num_kv_heads, None, mode)?;
        Ok((rope.apply(&k, mode)?, v))
    }

    /// (batch, len, heads * head_dim) → (batch, len, heads, head_dim), normalised per head if asked.
    fn heads(&self, x: &Tensor, heads: usize, norm: Option<&RmsNorm>, mode: ForwardMode) -> Result<Tensor> {
        let (b_sz, seq_len, _) = x.dims3()?;
        let x = x.reshape((b_sz, seq_len, heads, self.head_dim))?;
        match norm {
            Some(norm) => norm.forward(&x, mode),
            None => Ok(x),
        }
    }

    /// Attention of queries `q` (batch, q_len, heads, head_dim) over keys and values
    /// (batch, kv_len, kv_heads, head_dim), with an optional additive mask (q_len, kv_len), followed
    /// by the output projection: (batch, q_len, hidden).
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let (b_sz, q_len, _, _) = q.dims4()?;
        let kv_len = k.dim(1)?;
        let groups = self.num_heads / self.num_kv_heads;
        // (b, q_len, kv_heads, groups, hd) -> (b, kv_heads, q_len * groups, hd): the query heads of
        // one group become rows of a single product with their shared key head.
        let q = q
            .reshape((b_sz, q_len, self.num_kv_heads, groups, self.head_dim))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b_sz, self.num_kv_heads, q_len * groups, self.head_dim))?;
        // Keys and values may be strided views into the cache; matmul handles the strides of a
        // single sequence, a batch needs them laid out.
        let k = k.transpose(1, 2)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = if b_sz == 1 { (k, v) } else { (k.contiguous()?, v.contiguous()?) };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = q.matmul(&k.transpose(2, 3)?)?;
        // Inference folds the scale into the softmax kernel; training keeps differentiable ops.
        let scores = match mode {
            ForwardMode::Inference => scores,
            ForwardMode::Training => (scores * scale)?,
        };
        let scores = match mask {
            Some(mask) => scores
                .reshape((b_sz, self.num_kv_heads, q_len, groups, kv_len))?
                .broadcast_add(&mask.reshape((1, 1, q_len, 1, kv_len))?)?
                .reshape((b_sz, self.num_kv_heads, q_len * groups, kv_len))?,
            None => scores,
        };
        let probs = match mode {
            ForwardMode::Inference => crate::kernels::scaled_softmax_last_dim(&scores, scale as f32)?,
            ForwardMode::Training => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs
            .matmul(&v)?
            .reshape((b_sz, self.num_kv_heads, q_len, groups, self.head_dim))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((b_sz, q_len, self.num_heads * self.head_dim))?;
        let fast_o = self.fast.as_ref().map(|(_, _, o)| o);
        linear_forward(&out, &self.o_proj, fast_o, mode)
    }
}
