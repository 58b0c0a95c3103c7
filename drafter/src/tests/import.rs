//! Dream and LLaDA checkpoints, written by the test in their own layouts.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::json;

use crate::testing::max_abs_diff;
use crate::{DREAM_MASK_TOKEN_ID, DiffusionModel, LLADA_MASK_TOKEN_ID, QWEN25_VOCAB_SIZE, SamplerConfig, Vocab};

const HIDDEN: usize = 16;
const FFN: usize = 24;
const HEADS: usize = 4;
const LAYERS: usize = 2;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let len: usize = shape.iter().product();
    let data: Vec<f32> = (0..len as u64)
        .map(|i| ((i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(seed.wrapping_mul(1_442_695_040_888_963_407)) >> 40)
            % 2000) as f32
            / 10_000.0
            - 0.1)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
}

/// Qwen2 / Hugging Face Llama tensor names and shapes, as Dream stores them.
fn llama_layout(vocab: usize, kv_heads: usize, bias: bool) -> HashMap<String, Tensor> {
    let kv = kv_heads * HIDDEN / HEADS;
    let mut t = HashMap::new();
    let mut seed = 0;
    let mut put = |name: String, shape: &[usize]| {
        seed += 1;
        let value = if name.ends_with("norm.weight") { (random(shape, seed) + 1.0).expect("norm") } else { random(shape, seed) };
        t.insert(name, value);
    };
    put("model.embed_tokens.weight".into(), &[vocab, HIDDEN]);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), &[HIDDEN, HIDDEN]);
        put(format!("{p}.self_attn.k_proj.weight"), &[kv, HIDDEN]);
        put(format!("{p}.self_attn.v_proj.weight"), &[kv, HIDDEN]);
        if bias {
            put(format!("{p}.self_attn.q_proj.bias"), &[HIDDEN]);
            put(format!("{p}.self_attn.k_proj.bias"), &[kv]);
            put(format!("{p}.self_attn.v_proj.bias"), &[kv]);
        }
        put(format!("{p}.self_attn.o_proj.weight"), &[HIDDEN, HIDDEN]);
        put(format!("{p}.mlp.gate_proj.weight"), &[FFN, HIDDEN]);
        put(format!("{p}.mlp.up_proj.weight"), &[FFN, HIDDEN]);
        put(format!("{p}.mlp.down_proj.weight"), &[HIDDEN, FFN]);
        put(format!("{p}.input_layernorm.weight"), &[HIDDEN]);
        put(format!("{p}.post_attention_layernorm.weight"), &[HIDDEN]);
    }
    put("model.norm.weight".into(), &[HIDDEN]);
    put("lm_head.weight".into(), &[vocab, HIDDEN]);
    t
}

fn write_json(dir: &Path, value: serde_json::Value) {
    std::fs::write(dir.join("config.json"), value.to_string()).expect("config.json");
}

/// A Dream checkpoint in bf16, sharded in two files like the published one.
fn write_dream(dir: &Path) {
    write_json(
        dir,
        json!({"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": HIDDEN,
            "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": 2, "vocab_size": 152_064, "mask_token_id": 151_666, "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}),
    );
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    for (name, t) in llama_layout(152_064, 2, true) {
        let shard = if name.contains("layers.1") || name.starts_with("lm_head") { &mut second } else { &mut first };
        shard.insert(name, t.to_dtype(DType::BF16).expect("bf16"));
    }
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).expect("shard 1");
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).expect("shard 2");
}

#[test]
fn a_dream_checkpoint_loads_with_its_mask_biases_and_qwen_vocabulary() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dream(dir.path());
    let dream = DiffusionModel::load_dream(dir.path()).expect("load");
    let c = dream.config();
    assert_eq!((c.mask_token_id, c.shift_logits(), c.attention_bias()), (DREAM_MASK_TOKEN_ID, true, true));
    dream.vocab().check_verifier(QWEN25_VOCAB_SIZE).expect("Dream speaks Qwen2.5");
    let blocked = dream.vocab().blocked_ids();
    assert!(blocked.contains(&151_666) && blocked.contains(&151_936) && blocked.len() == 1 + 128);

    let mut cache = dream.new_cache().expect("cache");
    cache.extend(&dream, &[9707, 11, 1879], None).expect("extend");
    assert_eq!((cache.cached_len(), cache.pending_len()), (2, 1), "the last token predicts the block");
    let block = dream.draft(&mut cache, &[None; 4], &SamplerConfig { steps: 2, ..Default::default() }).expect("draft");
    assert!(block.tokens.iter().all(|&t| (t as usize) < QWEN25_VOCAB_SIZE && t != DREAM_MASK_TOKEN_ID));
}

#[test]
fn dream_predicts_each_position_from_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dream(dir.path());
    let dream = DiffusionModel::load_dream(dir.path()).expect("load");
    // The same weights without the shift: logits at position i are the output at position i.
    let mut config = dream.config().clone();
    config.shift_logits = Some(false);
    let weights: HashMap<String, Tensor> = dream.named_tensors().into_iter().collect();
    let unshifted = DiffusionModel::new(
        &config,
        Vocab::identity(&config).expect("vocab"),
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
    )
    .expect("unshifted");

    let context = [9707u32, 11, 1879, 0, 220];
    let mut shifted_cache = dream.new_cache().expect("cache");
    shifted_cache.extend(&dream, &context, None).expect("extend");
    let shifted = dream.block_logits(&mut shifted_cache, &[None; 3]).expect("shifted");

    // Unshifted, the last context token sits at the front of the block; block position j is then
    // predicted by the output one place earlier.
    let mut cache = unshifted.new_cache().expect("cache");
    cache.extend(&unshifted, &context[..4], None).expect("extend");
    let outputs = unshifted.block_logits(&mut cache, &[Some(220), None, None, None]).expect("outputs");
    assert!(max_abs_diff(&shifted, &outputs.narrow(0, 0, 3).expect("first three")) < 1e-4);
}

/// LLaDA tensor names (OLMo layout) for the Llama names of `llama_layout`.
fn olmo_name(llama: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "model.transformer.wte.weight"),
        ("model.norm.weight", "model.transformer.ln_f.weight"),
        ("lm_head.weight", "model.transformer.ff_out.weight"),
    ];
    if let Some((_, olmo)) = fixed.iter().find(|(l, _)| *l == llama) {
        return olmo.to_string();
    }
    llama
        .replace("model.layers.", "model.transformer.blocks.")
        .replace("self_attn.o_proj", "attn_out")
        .replace("self_attn.", "")
        .replace("mlp.gate_proj", "ff_proj")
        .replace("mlp.up_proj", "up_proj")
        .replace("mlp.down_proj", "ff_out")
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ff_norm")
}

fn write_llada(dir: &Path, olmo_names: bool) {
    write_json(
        dir,
        json!({"architectures": ["LLaDAModelLM"], "d_model": HIDDEN, "n_heads": HEADS, "n_kv_heads": HEADS,
            "n_layers": LAYERS, "mlp_hidden_size": FFN, "mlp_ratio": 4, "vocab_size": 126_464,
            "embedding_size": 126_464, "mask_token_id": 126_336, "rope_theta": 500_000.0, "rms_norm_eps": 1e-5,
            "include_bias": false, "include_qkv_bias": false, "weight_tying": false, "block_type": "llama",
            "input_emb_norm": false, "scale_logits": false, "activation_type": "silu", "rope": true}),
    );
    let tensors: HashMap<String, Tensor> = llama_layout(126_464, HEADS, false)
        .into_iter()
        .map(|(name, t)| (if olmo_names { olmo_name(&name) } else { name }, t))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("weights");
}

#[test]
fn a_llada_checkpoint_loads_from_olmo_names_like_from_llama_names() {
    let (olmo, llama) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    write_llada(olmo.path(), true);
    write_llada(llama.path(), false);
    let a = DiffusionModel::load_llada(olmo.path()).expect("OLMo names");
    let b = DiffusionModel::load_llada(llama.path()).expect("Llama names");
    assert_eq!((a.config().mask_token_id, a.config().shift_logits()), (LLADA_MASK_TOKEN_ID, false));
    let logits = |m: &DiffusionModel| {
        let mut cache = m.new_cache().expect("cache");
        cache.extend(m, &[1, 500, 126_000], None).expect("extend");
        assert_eq!(cache.pending_len(), 0, "no shift: every context token is cached");
        m.block_logits(&mut cache, &[None, Some(7), None]).expect("logits")
    };
    assert_eq!(max_abs_diff(&logits(&a), &logits(&b)), 0.0);
}

#[test]
fn a_llada_vocabulary_is_refused_by_a_qwen_verifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_llada(dir.path(), true);
    let llada = DiffusionModel::load_llada(dir.path()).expect("load");
    llada.vocab().check_verifier(126_464).expect("its own tokenizer");
    let err = llada.vocab().check_verifier(QWEN25_VOCAB_SIZE).expect_err("not Qwen's").to_string();
    assert!(err.contains("126464") && err.contains("151936"), "{err}");
}

#[test]
fn unsupported_llada_options_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_llada(dir.path(), true);
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("\"scale_logits\":false", "\"scale_logits\":true")).expect("write");
    let err = DiffusionModel::load_llada(dir.path()).expect_err("scaled logits").to_string();
    assert!(err.contains("scale_logits"), "{err}");
}
