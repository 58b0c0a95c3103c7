//! The training forward pass: context and block in one pass, no cache, differentiable.
//!
//! It computes exactly what drafting computes with a cache — context positions causal and blind to
//! the block, block positions seeing the whole context and each other (BD3-LM's block-diffusion
//! mask), or, in DFlash mode, the context's keys and values projected from verifier features —
//! so a loss on its logits trains the drafter that [`crate::DiffusionModel::draft`] runs. With
//! [`ForwardMode::Training`] it uses only operations with a backward pass.

use candle_core::Tensor;

use crate::decoder::Keys;
use crate::error::{DrafterError, Result};
use crate::layers::{ForwardMode, block_diffusion_mask};
use crate::model::DiffusionModel;

/// One batch of training sequences: `context_len` clean context tokens followed by block tokens
/// (noised: `[MASK]` at the positions to predict).
///
/// In DFlash mode the context is the positions with verifier features. Drafting runs context
/// tokens that have no features yet — the verifier's newest token, its correction or bonus — in
/// front of the block as given positions (DFlash's anchor); train the same way by making them the
/// first, unmasked, block positions.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Drafter ids, (batch, context_len + block_len), u32.
    pub tokens: Tensor,
    /// Positions `0..context_len` are context; the rest is the block.
    pub context_len: usize,
    /// DFlash mode only: the verifier's features at the context positions,
    /// (batch, context_len, feature_dim).
    pub features: Option<Tensor>,
}

impl DiffusionModel {
    /// Logits (batch, block_len, vocab_size) at the block positions. Row i is the model's output
    /// at block position i: the prediction for that position, or — for a shifted (Dream-style)
    /// model — for the position after it.
    pub fn forward_train(&self, batch: &TrainBatch, mode: ForwardMode) -> Result<Tensor> {
        let (b_sz, seq_len) = batch.tokens.dims2()?;
        let context = batch.context_len;
        if context >= seq_len {
            return Err(DrafterError::Input(format!(
                "context_len ({context}) must be below the sequence length ({seq_len}): the block is empty"
            )));
        }
        let block = seq_len - context;
        let hidden = match (&self.features, &batch.features) {
            (None, None) => {
                let mut x = self.embed(&batch.tokens)?;
                let rope = self.rope(0, seq_len)?;
                let mask = block_diffusion_mask(context, block, &self.device)?;
                for layer in &self.layers {
                    x = layer.forward(&x, &rope, Keys::Own { mask: Some(&mask) }, mode)?;
                }
                x.narrow(1, context, block)?
            }
            (Some(_), Some(features)) => {
                let (f_b, f_len, _) = features.dims3()?;
                if (f_b, f_len) != (b_sz, context) {
                    return Err(DrafterError::Input(format!(
                        "features have shape {:?} but the batch needs ({b_sz}, {context}, feature_dim)",
                        features.dims()
                    )));
                }
                let context_ids = batch.tokens.narrow(1, 0, context)?;
                let context_hidden =
                    if context == 0 { features.clone() } else { self.project_features(features, &context_ids, mode)? };
                let context_rope = self.rope(0, context)?;
                let mut x = self.embed(&batch.tokens.narrow(1, context, block)?)?;
                let rope = self.rope(context, block)?;
                for layer in &self.layers {
                    x = if context == 0 {
                        layer.forward(&x, &rope, Keys::Own { mask: None }, mode)?
                    } else {
                        let (k, v) = layer.self_attn.keys_values(&context_hidden, &context_rope, mode)?;
                        layer.forward(&x, &rope, Keys::Prefix { k: &k, v: &v }, mode)?
                    };
                }
                x
            }
            (None, Some(_)) => return Err(DrafterError::Input("this drafter takes no verifier features".into())),
            (Some(_), None) => {
                return Err(DrafterError::Input("this drafter is conditioned: the batch needs `features`".into()));
            }
        };
        self.logits(&hidden, mode)
    }
}
