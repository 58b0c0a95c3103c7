//! The drafter's tensors by name: the list a config implies, seeded random initialisation (for
//! tests, benches and the start of training) and the named tensors of a built model (for saving).
//!
//! Names follow Hugging Face's Qwen2 layout (`model.layers.N.self_attn.q_proj.weight`, ...) plus
//! DFlash's `model.fc` and `model.hidden_norm`, so a Dream checkpoint loads without renaming.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::DrafterConfig;
use crate::error::{DrafterError, Result};
use crate::model::DiffusionModel;
use crate::vocab::Vocab;

/// Standard deviation of random weight matrices (GPT-2 / Qwen initialiser range).
pub const INIT_STD: f64 = 0.02;

/// How a tensor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    Random,
    Ones,
}

/// Every tensor a config implies, with its shape.
fn tensor_specs(config: &DrafterConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (h, i, hd) = (config.hidden_size, config.intermediate_size, config.head_dim());
    let (q_out, kv_out) = (config.num_attention_heads * hd, config.num_key_value_heads * hd);
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![config.vocab_size, h], Init::Random)];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![q_out, h]),
            ("self_attn.k_proj.weight", vec![kv_out, h]),
            ("self_attn.v_proj.weight", vec![kv_out, h]),
            ("self_attn.o_proj.weight", vec![h, q_out]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            specs.push((format!("{p}.{name}"), shape, Init::Random));
        }
        if config.attention_bias() {
            for (name, len) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
                specs.push((format!("{p}.self_attn.{name}.bias"), vec![len], Init::Random));
            }
        }
        if config.qk_norm() {
            specs.push((format!("{p}.self_attn.q_norm.weight"), vec![hd], Init::Ones));
            specs.push((format!("{p}.self_attn.k_norm.weight"), vec![hd], Init::Ones));
        }
        specs.push((format!("{p}.input_layernorm.weight"), vec![h], Init::Ones));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Init::Ones));
    }
    specs.push(("model.norm.weight".into(), vec![h], Init::Ones));
    if !config.tie_word_embeddings() {
        specs.push(("lm_head.weight".into(), vec![config.vocab_size, h], Init::Random));
    }
    if let Some(target) = &config.target {
        specs.push(("model.fc.weight".into(), vec![h, target.feature_dim()], Init::Random));
        specs.push(("model.hidden_norm.weight".into(), vec![h], Init::Ones));
    }
    specs
}

/// Seeded random weights for `config`: uniform with standard deviation [`INIT_STD`] for matrices
/// and biases, ones for norm scales. The same seed gives the same weights.
pub fn random_weights(config: &DrafterConfig, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    config.validate()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let bound = (3.0f64).sqrt() * INIT_STD;
    tensor_specs(config)
        .into_iter()
        .map(|(name, shape, init)| {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = match init {
                Init::Ones => vec![1.0; len],
                Init::Random => (0..len).map(|_| rng.random_range(-bound..bound) as f32).collect(),
            };
            Ok((name, Tensor::from_vec(data, shape, device)?))
        })
        .collect()
}

/// A `VarMap` holding seeded random weights as trainable variables: build the model over
/// `VarBuilder::from_varmap(&varmap, DType::F32, device)` and hand `varmap.all_vars()` to AdamW.
pub fn seeded_varmap(config: &DrafterConfig, seed: u64, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| DrafterError::Input("the VarMap's lock is poisoned".into()))?;
        for (name, tensor) in random_weights(config, seed, device)? {
            data.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

impl DiffusionModel {
    /// A model with seeded random weights and a vocabulary map that fits its config: the identity
    /// for a vocabulary at least as large as the verifier's, otherwise the first verifier ids in
    /// order (for tests and benches; a trained checkpoint stores its real map).
    pub fn random(config: &DrafterConfig, seed: u64) -> Result<Self> {
        let device = Device::Cpu;
        let vocab = if config.vocab_size >= config.verifier_vocab_size() || config.unk_token_id.is_none() {
            Vocab::identity(config)?
        } else {
            let specials = [Some(config.mask_token_id), config.unk_token_id];
            let mut next = 0u32;
            let map = (0..config.vocab_size as u32)
                .map(|id| {
                    if specials.contains(&Some(id)) {
                        crate::vocab::NO_TOKEN
                    } else {
                        next += 1;
                        next - 1
                    }
                })
                .collect();
            Vocab::reduced(config, map)?
        };
        let weights = random_weights(config, seed, &device)?;
        Self::new(config, vocab, VarBuilder::from_tensors(weights, candle_core::DType::F32, &device))
    }

    /// The model's weights by checkpoint name (tied output weights appear once, as the embedding).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.embeddings().clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let attn = &layer.self_attn;
            for (name, linear) in [
                ("self_attn.q_proj", &attn.q_proj),
                ("self_attn.k_proj", &attn.k_proj),
                ("self_attn.v_proj", &attn.v_proj),
                ("self_attn.o_proj", &attn.o_proj),
                ("mlp.gate_proj", &layer.mlp.gate_proj),
                ("mlp.up_proj", &layer.mlp.up_proj),
                ("mlp.down_proj", &layer.mlp.down_proj),
            ] {
                out.push((format!("{p}.{name}.weight"), linear.weight().clone()));
                if let Some(bias) = linear.bias() {
                    out.push((format!("{p}.{name}.bias"), bias.clone()));
                }
            }
            for (name, norm) in [("self_attn.q_norm", &attn.q_norm), ("self_attn.k_norm", &attn.k_norm)] {
                if let Some(norm) = norm {
                    out.push((format!("{p}.{name}.weight"), norm.weight().clone()));
                }
            }
            out.push((format!("{p}.input_layernorm.weight"), layer.input_layernorm.weight().clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), layer.post_attention_layernorm.weight().clone()));
        }
        out.push(("model.norm.weight".into(), self.norm.weight().clone()));
        if !self.config.tie_word_embeddings() {
            out.push(("lm_head.weight".into(), self.lm_head.weight().clone()));
        }
        if let Some(features) = &self.features {
            out.push(("model.fc.weight".into(), features.fc.weight().clone()));
            out.push(("model.hidden_norm.weight".into(), features.hidden_norm.weight().clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;

    #[test]
    fn named_tensors_are_exactly_the_tensors_the_config_implies() {
        let mut config = tiny_config();
        config.attention_bias = Some(true);
        config.qk_norm = Some(true);
        let model = DiffusionModel::random(&config, 1).expect("model");
        let mut saved: Vec<_> = model.named_tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
        let mut specs: Vec<_> = tensor_specs(&config).into_iter().map(|(n, s, _)| (n, s)).collect();
        saved.sort();
        specs.sort();
        assert_eq!(saved, specs);
    }

    #[test]
    fn same_seed_gives_the_same_weights() {
        let config = tiny_config();
        let a = random_weights(&config, 3, &Device::Cpu).expect("weights");
        let b = random_weights(&config, 3, &Device::Cpu).expect("weights");
        let name = "model.layers.0.mlp.up_proj.weight";
        let diff = (&a[name] - &b[name]).and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>()).expect("diff");
        assert_eq!(diff, 0.0);
    }
}
