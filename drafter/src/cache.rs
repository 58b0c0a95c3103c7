//! The per-session context cache: keys and values of every drafter layer at the context positions,
//! kept across rounds and cut back when the verifier rejects tokens.
//!
//! Context positions are causal, so their keys and values never depend on anything after them:
//! extending the context computes only the new positions, and truncating it after a rejection is
//! exact without recomputation (the property BD3-LM's block-causal attention buys). Drafting
//! writes the block's keys and values into scratch rows past the context and leaves the context
//! untouched.
//!
//! Tokens can be *pending*: in the context but without cached keys and values yet. A shifted
//! (Dream-style) model keeps the last context token pending, because its output predicts the first
//! block position; a DFlash model keeps tokens pending until the verifier's features for them
//! arrive (the verifier's newest token — its correction or bonus — has none yet). Such pending
//! tokens run with the block, as known positions in front of it, exactly as DFlash runs its anchor
//! token.
//!
//! A standalone model's new tokens may also be *deferred* ([`DraftCache::extend_deferred`]): they
//! wait for the next drafting pass, which runs them causally in front of the block and caches
//! them. A round then costs one pass over the layers instead of two (one for the new tokens, one
//! for the block); the per-operation overhead of a pass over a few rows is most of its cost.

use candle_core::{DType, Device, Tensor};

use crate::error::{DrafterError, Result};
use crate::model::DiffusionModel;

/// Rows by which a layer's buffers grow at least, so short rounds do not reallocate each time.
const MIN_CAPACITY: usize = 256;

/// One layer's key and value buffers, (1, capacity, kv_heads, head_dim) each.
#[derive(Debug)]
pub(crate) struct LayerKv {
    k: Tensor,
    v: Tensor,
    capacity: usize,
}

impl LayerKv {
    fn new(kv_heads: usize, head_dim: usize, device: &Device) -> Result<Self> {
        let k = Tensor::zeros((1, 0, kv_heads, head_dim), DType::F32, device)?;
        Ok(Self { v: k.clone(), k, capacity: 0 })
    }

    /// Writes keys and values (1, len, kv_heads, head_dim) at rows `start..start + len` and returns
    /// views of rows `0..start + len`. Rows from `start` on are overwritten; rows before it are kept.
    pub(crate) fn write(&mut self, start: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let len = k.dim(1)?;
        let end = start + len;
        if end > self.capacity {
            let capacity = end.max(2 * self.capacity).max(MIN_CAPACITY);
            let (_, _, kv_heads, head_dim) = self.k.dims4()?;
            let grown_k = Tensor::zeros((1, capacity, kv_heads, head_dim), DType::F32, self.k.device())?;
            let grown_v = grown_k.zeros_like()?;
            if start > 0 {
                grown_k.slice_set(&self.k.narrow(1, 0, start)?, 1, 0)?;
                grown_v.slice_set(&self.v.narrow(1, 0, start)?, 1, 0)?;
            }
            (self.k, self.v, self.capacity) = (grown_k, grown_v, capacity);
        }
        self.k.slice_set(&k.contiguous()?, 1, start)?;
        self.v.slice_set(&v.contiguous()?, 1, start)?;
        Ok((self.k.narrow(1, 0, end)?, self.v.narrow(1, 0, end)?))
    }

    /// A deep copy of rows `0..rows` (a tensor clone would share, and later overwrite, storage).
    fn copy(&self, rows: usize) -> Result<Self> {
        let (_, _, kv_heads, head_dim) = self.k.dims4()?;
        let mut copy = Self::new(kv_heads, head_dim, self.k.device())?;
        if rows > 0 {
            copy.write(0, &self.k.narrow(1, 0, rows)?, &self.v.narrow(1, 0, rows)?)?;
        }
        Ok(copy)
    }

    #[cfg(test)]
    pub(crate) fn rows(&self, rows: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.k.narrow(1, 0, rows)?, self.v.narrow(1, 0, rows)?))
    }
}

/// What a cache must agree on with the model that fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheShape {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    feature_dim: Option<usize>,
    keep_pending: usize,
}

impl CacheShape {
    fn of(model: &DiffusionModel) -> Self {
        let c = model.config();
        Self {
            layers: c.num_hidden_layers,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim(),
            feature_dim: c.target.as_ref().map(|t| t.feature_dim()),
            keep_pending: usize::from(c.shift_logits()),
        }
    }
}

/// One session's context as the drafter sees it. Make one per generation with
/// [`DraftCache::new`], [`extend`](DraftCache::extend) it with every token the verifier accepts
/// (and its correction), [`truncate`](DraftCache::truncate) it when tokens are taken back, and pass
/// it to [`DiffusionModel::draft`].
#[derive(Debug)]
pub struct DraftCache {
    /// Drafter ids of every context token.
    pub(crate) tokens: Vec<u32>,
    /// Context positions whose keys and values are cached; the rest are pending.
    pub(crate) committed: usize,
    pub(crate) layers: Vec<LayerKv>,
    shape: CacheShape,
}

impl DraftCache {
    /// An empty cache for `model`.
    pub fn new(model: &DiffusionModel) -> Result<Self> {
        let shape = CacheShape::of(model);
        let layers = (0..shape.layers)
            .map(|_| LayerKv::new(shape.kv_heads, shape.head_dim, model.device()))
            .collect::<Result<_>>()?;
        Ok(Self { tokens: Vec::new(), committed: 0, layers, shape })
    }

    /// Appends context tokens (verifier ids).
    ///
    /// Standalone model: `features` must be `None`; the new tokens run causally through the layers
    /// and their keys and values are cached.
    ///
    /// Conditioned (DFlash) model: `features` are the verifier's hidden states, row-major
    /// `(rows, n_feature_layers * verifier_hidden)`, for the oldest pending tokens (after this
    /// call's tokens are appended) — typically every token the verifier has evaluated, which is all
    /// but its newest. Those tokens get cached keys and values; tokens without features stay pending
    /// and run with the block. `features` may come with no new tokens.
    pub fn extend(&mut self, model: &DiffusionModel, tokens: &[u32], features: Option<&[f32]>) -> Result<()> {
        self.check_model(model)?;
        let ids = tokens.iter().map(|&t| model.vocab().to_drafter(t)).collect::<Result<Vec<_>, _>>()?;
        let new_len = self.tokens.len() + ids.len();
        let features = match (self.shape.feature_dim, features) {
            (None, Some(_)) => {
                return Err(DrafterError::Input(
                    "this drafter takes no verifier features (its config has no `target`)".into(),
                ));
            }
            (None, None) => None,
            (Some(_), None) => None,
            (Some(dim), Some(data)) => {
                if data.len() % dim != 0 {
                    return Err(DrafterError::Input(format!(
                        "features hold {} values, not a whole number of rows of {dim} \
                         (n_feature_layers * verifier_hidden_size)",
                        data.len()
                    )));
                }
                let rows = data.len() / dim;
                if self.committed + rows > new_len {
                    return Err(DrafterError::Input(format!(
                        "features for {rows} positions from position {} but the context has {new_len} tokens",
                        self.committed
                    )));
                }
                Some(Tensor::from_slice(data, (rows, dim), model.device())?)
            }
        };
        let old_len = self.tokens.len();
        self.tokens.extend(ids);
        let result = match features {
            Some(features) => model.commit_features(self, &features),
            None if self.shape.feature_dim.is_none() => {
                model.commit_tokens(self, new_len.saturating_sub(self.shape.keep_pending))
            }
            None => Ok(()),
        };
        if result.is_err() {
            // Leave the session as it was: committed only moves forward after a successful pass.
            self.tokens.truncate(old_len);
            self.committed = self.committed.min(old_len);
        }
        result
    }

    /// Appends context tokens (verifier ids) like [`extend`](Self::extend) without features, but a
    /// standalone model does not run them through its layers now: the next drafting pass runs them
    /// causally in front of the block (they never see it) and caches their keys and values, which
    /// saves a pass per round. What the cache holds after that pass equals what `extend` makes, up
    /// to float rounding. A conditioned model keeps the tokens pending until their features
    /// arrive, as `extend` does. A deferred run longer than a prompt chunk is cached on its own
    /// first.
    pub fn extend_deferred(&mut self, model: &DiffusionModel, tokens: &[u32]) -> Result<()> {
        self.check_model(model)?;
        let ids = tokens.iter().map(|&t| model.vocab().to_drafter(t)).collect::<Result<Vec<_>, _>>()?;
        self.tokens.extend(ids);
        Ok(())
    }

    /// End of the context tokens that run causally and enter the cache at the next pass: a
    /// standalone model's deferred tokens (all but the pending ones a shifted model keeps), none
    /// for a conditioned model, whose tokens wait for features.
    pub(crate) fn deferred_end(&self) -> usize {
        match self.shape.feature_dim {
            None => self.tokens.len().saturating_sub(self.shape.keep_pending).max(self.committed),
            Some(_) => self.committed,
        }
    }

    /// Cuts the context back to its first `len` tokens (no-op if it is not longer). Exact: cached
    /// positions never saw what came after them.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        self.committed = self.committed.min(len.saturating_sub(self.shape.keep_pending));
    }

    /// Number of context tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the context is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Context tokens whose keys and values are cached.
    pub fn cached_len(&self) -> usize {
        self.committed
    }

    /// Context tokens without cached keys and values: pending ones (they run with the block at
    /// each draft) and deferred ones (cached by the next draft).
    pub fn pending_len(&self) -> usize {
        self.tokens.len() - self.committed
    }

    /// A deep copy, e.g. to draft alternative continuations from the same context.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.clone(),
            committed: self.committed,
            layers: self.layers.iter().map(|l| l.copy(self.committed)).collect::<Result<_>>()?,
            shape: self.shape,
        })
    }

    pub(crate) fn check_model(&self, model: &DiffusionModel) -> Result<()> {
        if self.shape != CacheShape::of(model) {
            return Err(DrafterError::Input(format!(
                "the draft cache was made for another model ({:?}, this model: {:?})",
                self.shape,
                CacheShape::of(model)
            )));
        }
        Ok(())
    }
}
