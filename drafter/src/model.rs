//! The block-diffusion drafter: a stack of Qwen2/Llama decoder blocks used as a masked diffusion
//! language model over blocks (BD3-LM, Arriola et al. 2025; Fast-dLLM v2), optionally conditioned
//! on the verifier's hidden states (DFlash).
//!
//! Context positions are causal and cached per session ([`DraftCache`]). The block being drafted —
//! `[MASK]` at positions still to be drafted — attends to the whole cached context and to itself
//! in both directions, and one pass yields logits for every block position. In DFlash mode the
//! context never runs through the layers: its keys and values in every layer are projections of
//! the verifier's features, so a round costs one pass over the block only.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::cache::DraftCache;
use crate::config::{DrafterConfig, MAX_BLOCK_SIZE};
use crate::decoder::{DecoderLayer, Keys};
use crate::error::{DrafterError, Result};
use crate::layers::{FastLinear, ForwardMode, RmsNorm, Rope, causal_mask, context_then_block_mask, linear_forward};
use crate::vocab::Vocab;

/// Context tokens run through the layers per pass when a long prompt enters the cache; bounds the
/// (rows × context) attention scores held at once.
const EXTEND_CHUNK: usize = 256;

/// Projection of the verifier's features into the drafter's width (DFlash `fc` + `hidden_norm`).
#[derive(Debug, Clone)]
pub(crate) struct FeatureProjection {
    pub(crate) fc: Linear,
    pub(crate) hidden_norm: RmsNorm,
    fast_fc: Option<FastLinear>,
}

/// A block-diffusion drafter with its vocabulary map. Immutable once built: sessions keep their
/// state in a [`DraftCache`], so one model can serve many sessions.
#[derive(Debug, Clone)]
pub struct DiffusionModel {
    pub(crate) config: DrafterConfig,
    pub(crate) vocab: Vocab,
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) features: Option<FeatureProjection>,
    /// Inference copy of the output layer (see [`FastLinear`]).
    fast_lm_head: Option<FastLinear>,
    pub(crate) device: Device,
}

impl DiffusionModel {
    /// Builds the model from a `VarBuilder` whose tensor names follow CHECKPOINT.md. With a
    /// `VarBuilder` over a `VarMap` the weights are trainable variables (AdamW can update them);
    /// over loaded tensors they are a checkpoint.
    pub fn new(config: &DrafterConfig, vocab: Vocab, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        if vocab.len() != config.vocab_size {
            return Err(DrafterError::Config {
                field: "vocab_size",
                reason: format!("is {} but the vocabulary map has {} entries", config.vocab_size, vocab.len()),
            });
        }
        let device = vb.device().clone();
        let model_vb = vb.pp("model");
        let embed_tokens = candle_nn::embedding(config.vocab_size, config.hidden_size, model_vb.pp("embed_tokens"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(config, model_vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(config.hidden_size, config.rms_norm_eps(), model_vb.pp("norm"))?;
        let lm_head = if config.tie_word_embeddings() {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(config.hidden_size, config.vocab_size, vb.pp("lm_head"))?
        };
        let features = match &config.target {
            Some(target) => Some(FeatureProjection {
                fc: candle_nn::linear_no_bias(target.feature_dim(), config.hidden_size, model_vb.pp("fc"))?,
                hidden_norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps(), model_vb.pp("hidden_norm"))?,
                fast_fc: None,
            }),
            None => None,
        };
        let mut model = Self {
            config: config.clone(),
            vocab,
            embed_tokens,
            layers,
            norm,
            lm_head,
            features,
            fast_lm_head: None,
            device,
        };
        // Weights that are trainable variables change under the optimizer, so a copy would go
        // stale: such a model computes with the variables themselves, a little slower.
        if !model.embed_tokens.embeddings().is_variable() {
            model.prepare_inference()?;
        }
        Ok(model)
    }

    /// Builds the transposed, fused copies of the weights that inference multiplies by.
    fn prepare_inference(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer.prepare_inference()?;
        }
        self.fast_lm_head = Some(FastLinear::fuse(&[&self.lm_head])?);
        if let Some(features) = &mut self.features {
            features.fast_fc = Some(FastLinear::fuse(&[&features.fc])?);
        }
        Ok(())
    }

    /// Logits from final hidden states, (batch, len, hidden) → (batch, len, vocab_size).
    pub(crate) fn logits(&self, hidden: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let hidden = self.norm.forward(hidden, mode)?;
        linear_forward(&hidden, &self.lm_head, self.fast_lm_head.as_ref(), mode)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &DrafterConfig {
        &self.config
    }

    /// The drafter-id ↔ verifier-id map.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The device the weights live on (the CPU for Duet).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of one feature row this model expects, if it is conditioned on the verifier.
    pub fn feature_dim(&self) -> Option<usize> {
        self.config.target.as_ref().map(|t| t.feature_dim())
    }

    /// A fresh session cache for this model.
    pub fn new_cache(&self) -> Result<DraftCache> {
        DraftCache::new(self)
    }

    /// Logits over the drafter vocabulary, (block_len, vocab_size), for every position of `block`
    /// (verifier ids; `None` = `[MASK]`) placed right after the cache's context. The cache's
    /// context is unchanged. The denoising sampler calls this once per step.
    pub fn block_logits(&self, cache: &mut DraftCache, block: &[Option<u32>]) -> Result<Tensor> {
        let ids = self.block_ids(block)?;
        self.forward_block(cache, &ids, None)
    }

    /// Drafter ids of a block given in verifier ids (`None` → `[MASK]`, unknown → UNK).
    pub(crate) fn block_ids(&self, block: &[Option<u32>]) -> Result<Vec<u32>> {
        block
            .iter()
            .map(|t| match t {
                Some(id) => Ok(self.vocab.to_drafter(*id)?),
                None => Ok(self.vocab.mask_id()),
            })
            .collect()
    }

    /// One pass over the uncached context tokens and the block (drafter ids), returning logits for
    /// the block positions `rows` (all of them if `None`), in that order. Later denoising steps
    /// only need the still-masked rows, which spares most of the output layer, the largest matrix,
    /// and the last layer's attention and feed-forward for the other rows.
    ///
    /// Deferred context tokens ([`DraftCache::extend_deferred`]) run first, causally, and stay
    /// cached after the pass; pending ones run in front of the block and see it.
    pub(crate) fn forward_block(&self, cache: &mut DraftCache, block: &[u32], rows: Option<&[usize]>) -> Result<Tensor> {
        if !(1..=MAX_BLOCK_SIZE).contains(&block.len()) {
            return Err(DrafterError::Input(format!(
                "a block holds 1 to {MAX_BLOCK_SIZE} positions, got {}",
                block.len()
            )));
        }
        cache.check_model(self)?;
        let deferred_end = cache.deferred_end();
        if deferred_end - cache.committed > EXTEND_CHUNK {
            // A long deferred run (a prompt) is cached in chunks, which bounds the scores held at once.
            self.commit_tokens(cache, deferred_end)?;
        }
        let start = cache.committed;
        let deferred = cache.deferred_end() - start;
        let pending = cache.tokens.len() - start;
        let shift = usize::from(self.config.shift_logits());
        if pending < shift {
            return Err(DrafterError::Input(
                "a shifted (Dream-style) drafter needs at least one context token before the block".into(),
            ));
        }
        let mut ids = cache.tokens[start..].to_vec();
        ids.extend_from_slice(block);
        let n = ids.len();
        let mut x = self.embed(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
        let rope = self.rope(start, n)?;
        let mask = match deferred {
            0 => None,
            _ => Some(context_then_block_mask(start, deferred, n - deferred, &self.device)?),
        };
        // Shifted models read the prediction for block position j off the position before it.
        let offset = pending - shift;
        let keep: Vec<usize> = match rows {
            None => (offset..offset + block.len()).collect(),
            Some(rows) => rows.iter().map(|&r| offset + r).collect(),
        };
        let last = self.layers.len().saturating_sub(1);
        for (i, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let keys = Keys::Cache { kv, start, mask: mask.as_ref() };
            let keep = if i == last { Some(keep.as_slice()) } else { None };
            x = layer.forward_rows(&x, &rope, keys, keep, ForwardMode::Inference)?;
        }
        // The deferred tokens' keys and values are now in every layer, as `commit_tokens` makes them.
        cache.committed = start + deferred;
        Ok(self.logits(&x, ForwardMode::Inference)?.squeeze(0)?)
    }

    /// Runs the pending tokens up to `upto` causally through the layers and caches their keys and
    /// values (standalone mode).
    pub(crate) fn commit_tokens(&self, cache: &mut DraftCache, upto: usize) -> Result<()> {
        let Some((last, inner)) = self.layers.split_last() else {
            return Ok(()); // invariant: validate() requires at least one layer
        };
        while cache.committed < upto {
            let start = cache.committed;
            let n = (upto - start).min(EXTEND_CHUNK);
            let ids = cache.tokens[start..start + n].to_vec();
            let mut x = self.embed(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
            let rope = self.rope(start, n)?;
            let mask = if n > 1 { Some(causal_mask(start, n, &self.device)?) } else { None };
            let (inner_kv, last_kv) = cache.layers.split_at_mut(inner.len());
            for (layer, kv) in inner.iter().zip(inner_kv.iter_mut()) {
                x = layer.forward(&x, &rope, Keys::Cache { kv, start, mask: mask.as_ref() }, ForwardMode::Inference)?;
            }
            let (k, v) = last.keys_values(&x, &rope, ForwardMode::Inference)?;
            last_kv[0].write(start, &k, &v)?;
            cache.committed = start + n;
        }
        Ok(())
    }

    /// Caches keys and values made from verifier features (rows, feature_dim) for the oldest
    /// pending tokens (DFlash mode).
    pub(crate) fn commit_features(&self, cache: &mut DraftCache, features: &Tensor) -> Result<()> {
        let rows = features.dim(0)?;
        if rows == 0 {
            return Ok(());
        }
        let start = cache.committed;
        let ids = cache.tokens[start..start + rows].to_vec();
        let ids = Tensor::from_vec(ids, (1, rows), &self.device)?;
        let hidden = self.project_features(&features.unsqueeze(0)?, &ids, ForwardMode::Inference)?;
        let rope = self.rope(start, rows)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let (k, v) = layer.self_attn.keys_values(&hidden, &rope, ForwardMode::Inference)?;
            kv.write(start, &k, &v)?;
        }
        cache.committed = start + rows;
        Ok(())
    }

    /// The context stream of DFlash mode: `hidden_norm(fc(features))`, plus the context tokens'
    /// embeddings if the config asks for them. `features` (batch, len, feature_dim), `ids` (batch, len).
    pub(crate) fn project_features(&self, features: &Tensor, ids: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let Some(projection) = &self.features else {
            return Err(DrafterError::Input("this drafter takes no verifier features".into()));
        };
        let features = features.to_dtype(DType::F32)?;
        let projected = linear_forward(&features, &projection.fc, projection.fast_fc.as_ref(), mode)?;
        let hidden = projection.hidden_norm.forward(&projected, mode)?;
        let add_embeddings = self.config.target.as_ref().is_some_and(|t| t.add_token_embeddings());
        Ok(if add_embeddings { (hidden + self.embed(ids)?)? } else { hidden })
    }

    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    pub(crate) fn rope(&self, start: usize, len: usize) -> Result<Rope> {
        Rope::new(start, len, self.config.head_dim(), self.config.rope_theta(), &self.device)
    }
}
