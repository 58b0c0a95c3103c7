//! LLaDA (Nie et al. 2025, "Large Language Diffusion Models"): a masked-diffusion LM trained from
//! scratch in a Llama architecture, stored with OLMo's tensor names (`model.transformer.blocks.N.
//! ff_proj`, ...), with its own 126,464-id tokenizer and `[MASK]` = 126336. No shift: the output at
//! position i predicts position i. Checkpoints already in Hugging Face Llama names load too.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use crate::checkpoint::{read_json, read_safetensors_dir};
use crate::config::DrafterConfig;
use crate::error::{DrafterError, Result};
use crate::model::DiffusionModel;
use crate::vocab::Vocab;

/// LLaDA's `[MASK]` id.
pub const LLADA_MASK_TOKEN_ID: u32 = 126_336;

/// The fields of LLaDA's config.json the drafter needs, and those it must refuse.
#[derive(Debug, Deserialize)]
struct LladaConfig {
    d_model: usize,
    n_heads: usize,
    #[serde(default)]
    n_kv_heads: Option<usize>,
    n_layers: usize,
    #[serde(default)]
    mlp_hidden_size: Option<usize>,
    #[serde(default)]
    mlp_ratio: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default)]
    mask_token_id: Option<u32>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    weight_tying: Option<bool>,
    #[serde(default)]
    include_bias: Option<bool>,
    #[serde(default)]
    include_qkv_bias: Option<bool>,
    #[serde(default)]
    input_emb_norm: Option<bool>,
    #[serde(default)]
    scale_logits: Option<bool>,
    #[serde(default)]
    block_type: Option<String>,
}

/// OLMo block tensor names → Hugging Face Llama names.
const BLOCK_RENAMES: [(&str, &str); 9] = [
    ("q_proj", "self_attn.q_proj"),
    ("k_proj", "self_attn.k_proj"),
    ("v_proj", "self_attn.v_proj"),
    ("attn_out", "self_attn.o_proj"),
    ("ff_proj", "mlp.gate_proj"),
    ("up_proj", "mlp.up_proj"),
    ("ff_out", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ff_norm", "post_attention_layernorm"),
];

fn rename(name: &str) -> Option<String> {
    let rest = name.strip_prefix("model.transformer.")?;
    match rest {
        "wte.weight" => return Some("model.embed_tokens.weight".into()),
        "ln_f.weight" => return Some("model.norm.weight".into()),
        "ff_out.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = rest.strip_prefix("blocks.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, param) = tail.rsplit_once('.')?;
    let (_, llama) = BLOCK_RENAMES.iter().find(|(olmo, _)| *olmo == module)?;
    Some(format!("model.layers.{layer}.{llama}.{param}"))
}

impl DiffusionModel {
    /// Loads a LLaDA checkpoint folder (config.json and one or more *.safetensors, any float
    /// dtype). Its vocabulary is LLaDA's own, so `check_verifier` refuses Qwen verifiers.
    pub fn load_llada(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let llada: LladaConfig = read_json(&dir.join("config.json"))?;
        let unsupported = |what: &str| DrafterError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("LLaDA option `{what}` is not supported by the drafter"),
        };
        if llada.input_emb_norm == Some(true) {
            return Err(unsupported("input_emb_norm"));
        }
        if llada.scale_logits == Some(true) {
            return Err(unsupported("scale_logits"));
        }
        if llada.include_bias == Some(true) {
            return Err(unsupported("include_bias"));
        }
        if llada.block_type.as_deref().is_some_and(|t| t != "llama") {
            return Err(unsupported("block_type other than llama"));
        }
        let tensors: HashMap<String, Tensor> = read_safetensors_dir(dir)?
            .into_iter()
            .map(|(name, t)| (rename(&name).unwrap_or(name), t))
            .collect();
        let intermediate = llada.mlp_hidden_size.unwrap_or(llada.mlp_ratio.unwrap_or(4) * llada.d_model);
        let config = DrafterConfig {
            vocab_size: llada.embedding_size.unwrap_or(llada.vocab_size),
            hidden_size: llada.d_model,
            intermediate_size: intermediate,
            num_hidden_layers: llada.n_layers,
            num_attention_heads: llada.n_heads,
            num_key_value_heads: llada.n_kv_heads.unwrap_or(llada.n_heads),
            mask_token_id: llada.mask_token_id.unwrap_or(LLADA_MASK_TOKEN_ID),
            head_dim: None,
            unk_token_id: None,
            rms_norm_eps: llada.rms_norm_eps.or(Some(1e-5)),
            rope_theta: llada.rope_theta.or(Some(10_000.0)),
            attention_bias: Some(llada.include_qkv_bias == Some(true)),
            qk_norm: None,
            tie_word_embeddings: llada.weight_tying,
            shift_logits: Some(false),
            verifier_vocab_size: Some(llada.vocab_size),
            target: None,
        };
        config.validate()?;
        let vocab = Vocab::identity(&config)?;
        Self::from_tensors(&config, vocab, tensors, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn olmo_names_map_to_llama_names() {
        assert_eq!(rename("model.transformer.blocks.3.ff_proj.weight").as_deref(), Some("model.layers.3.mlp.gate_proj.weight"));
        assert_eq!(rename("model.transformer.blocks.0.attn_out.weight").as_deref(), Some("model.layers.0.self_attn.o_proj.weight"));
        assert_eq!(rename("model.transformer.ff_out.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(rename("model.layers.0.mlp.up_proj.weight"), None, "already Llama names");
    }
}
