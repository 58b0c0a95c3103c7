//! One pre-norm decoder block (Qwen2/Llama): `x + attn(norm(x))`, then `x + mlp(norm(x))`.
//!
//! What the block attends to is the caller's choice ([`Keys`]): its own positions under a mask
//! (a training pass over context + block), a prefix of keys and values plus its own positions (a
//! DFlash training pass), or a session's cache, into which its keys and values are written first
//! (drafting and extending the context).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::attention::Attention;
use crate::cache::LayerKv;
use crate::config::DrafterConfig;
use crate::error::Result;
use crate::layers::{ForwardMode, Mlp, RmsNorm, Rope};

/// The keys and values a block attends to, besides its own.
pub(crate) enum Keys<'a> {
    /// Only the positions of `x`, under an optional additive mask (q_len, q_len).
    Own { mask: Option<&'a Tensor> },
    /// Prefix keys and values (batch, prefix, kv_heads, head_dim) in front of the positions of `x`;
    /// no mask: every position sees the prefix and all of `x`.
    Prefix { k: &'a Tensor, v: &'a Tensor },
    /// A cache layer: the keys and values of `x` are written at rows `start..`, and `x` attends to
    /// rows `0..start + q_len` under an optional additive mask (q_len, start + q_len).
    Cache { kv: &'a mut LayerKv, start: usize, mask: Option<&'a Tensor> },
}

/// One decoder block.
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    pub(crate) self_attn: Attention,
    pub(crate) mlp: Mlp,
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    pub(crate) fn new(config: &DrafterConfig, vb: VarBuilder) -> Result<Self> {
        let eps = config.rms_norm_eps();
        Ok(Self {
            self_attn: Attention::new(config, vb.pp("self_attn"))?,
            mlp: Mlp::new(config.hidden_size, config.intermediate_size, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(config.hidden_size, eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(config.hidden_size, eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    /// Builds the inference copies of the weights.
    pub(crate) fn prepare_inference(&mut self) -> Result<()> {
        self.self_attn.prepare_inference()?;
        self.mlp.prepare_inference()
    }

    /// Runs the block over `x` (batch, len, hidden) at the positions of `rope`.
    pub(crate) fn forward(&self, x: &Tensor, rope: &Rope, keys: Keys<'_>, mode: ForwardMode) -> Result<Tensor> {
        self.forward_rows(x, rope, keys, None, mode)
    }

    /// Runs the block over `x` and returns only the rows `keep` (indices into `x`'s positions, in
    /// that order; all rows if `None`). Every row still makes its keys and values — the kept rows
    /// attend to them, and a cache stores them — but only the kept rows pay for attention and the
    /// feed-forward layer: the last block of a draft pass needs just the rows whose logits are read.
    pub(crate) fn forward_rows(
        &self,
        x: &Tensor,
        rope: &Rope,
        keys: Keys<'_>,
        keep: Option<&[usize]>,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, mode)?;
        let (q, k, v) = self.self_attn.queries_keys_values(&h, rope, mode)?;
        let (x, q) = (select_rows(x, 1, keep)?, select_rows(&q, 1, keep)?);
        let attn = match keys {
            Keys::Own { mask } => {
                let mask = mask.map(|m| select_rows(m, 0, keep)).transpose()?;
                self.self_attn.attend(&q, &k, &v, mask.as_ref(), mode)?
            }
            Keys::Prefix { k: pk, v: pv } => {
                let k = Tensor::cat(&[pk, &k], 1)?;
                let v = Tensor::cat(&[pv, &v], 1)?;
                self.self_attn.attend(&q, &k, &v, None, mode)?
            }
            Keys::Cache { kv, start, mask } => {
                let (k, v) = kv.write(start, &k, &v)?;
                let mask = mask.map(|m| select_rows(m, 0, keep)).transpose()?;
                self.self_attn.attend(&q, &k, &v, mask.as_ref(), mode)?
            }
        };
        let x = (x + attn)?;
        let h = self.post_attention_layernorm.forward(&x, mode)?;
        Ok((&x + self.mlp.forward(&h, mode)?)?)
    }

    /// Only the keys and values this block makes from `x`: what the last block contributes when
    /// context positions enter the cache (their outputs are never read).
    pub(crate) fn keys_values(&self, x: &Tensor, rope: &Rope, mode: ForwardMode) -> Result<(Tensor, Tensor)> {
        let h = self.input_layernorm.forward(x, mode)?;
        self.self_attn.keys_values(&h, rope, mode)
    }
}

/// Rows `keep` of `t` along `dim` (all of `t` if `None`): a view when they are consecutive, as a
/// block's rows are, a gathered copy otherwise.
fn select_rows(t: &Tensor, dim: usize, keep: Option<&[usize]>) -> Result<Tensor> {
    let Some(keep) = keep else { return Ok(t.clone()) };
    let Some(&first) = keep.first() else { return Ok(t.narrow(dim, 0, 0)?) };
    if keep.iter().enumerate().all(|(i, &r)| r == first + i) {
        return Ok(t.narrow(dim, first, keep.len())?);
    }
    let index: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
    Ok(t.index_select(&Tensor::from_vec(index, keep.len(), t.device())?, dim)?)
}
