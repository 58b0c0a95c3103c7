//! Saving and loading Duet checkpoints.

use crate::testing::{tiny_conditioned_config, tiny_config, tokens};
use crate::{DiffusionModel, DrafterError, QWEN25_VOCAB_SIZE, SamplerConfig, VOCAB_TENSOR, Vocab};

fn draft(model: &DiffusionModel, features: Option<&[f32]>) -> Vec<u32> {
    let mut cache = model.new_cache().expect("cache");
    cache.extend(model, &tokens(7, 9), features).expect("extend");
    let sampler = SamplerConfig { steps: 2, temperature: 0.7, seed: 3, ..SamplerConfig::default() };
    model.draft(&mut cache, &[None; 6], &sampler).expect("draft").tokens
}

#[test]
fn a_saved_checkpoint_loads_back_to_the_same_drafts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (config, features) in [(tiny_config(), None), (tiny_conditioned_config(), Some(vec![0.25f32; 6 * 48]))] {
        let model = DiffusionModel::random(&config, 5).expect("model");
        model.save(dir.path()).expect("save");
        let loaded = DiffusionModel::load(dir.path()).expect("load");
        assert_eq!(loaded.config(), model.config());
        assert_eq!(loaded.vocab(), model.vocab());
        assert_eq!(draft(&loaded, features.as_deref()), draft(&model, features.as_deref()));
    }
}

#[test]
fn the_reduced_vocabulary_map_travels_inside_the_weights_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tiny_config();
    let frequent: Vec<u32> = (0..62).map(|i| 151_645 - i * 1000).collect();
    let vocab = Vocab::reduced(&config, Vocab::reduced_map_from_frequent(&frequent)).expect("map");
    let weights = crate::random_weights(&config, 1, &candle_core::Device::Cpu).expect("weights");
    let vb = candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, &candle_core::Device::Cpu);
    let model = DiffusionModel::new(&config, vocab, vb).expect("model");
    model.save(dir.path()).expect("save");
    let tensors = candle_core::safetensors::load(dir.path().join("model.safetensors"), &candle_core::Device::Cpu)
        .expect("read back");
    assert!(tensors.contains_key(VOCAB_TENSOR));
    let loaded = DiffusionModel::load(dir.path()).expect("load");
    assert_eq!(loaded.vocab().to_drafter(151_645), Ok(0), "<|im_end|> is drafter id 0");
    assert!(loaded.vocab().can_draft(150_645) && !loaded.vocab().can_draft(151_644));
    loaded.vocab().check_verifier(QWEN25_VOCAB_SIZE).expect("fits Qwen2.5");
}

#[test]
fn a_missing_tensor_is_reported_with_the_checkpoint_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = DiffusionModel::random(&tiny_config(), 5).expect("model");
    model.save(dir.path()).expect("save");
    let mut config = tiny_config();
    config.num_hidden_layers = 3;
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&config).expect("json")).expect("write");
    let err = DiffusionModel::load(dir.path()).expect_err("layer 2 is missing");
    assert!(matches!(err, DrafterError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("layers.2"), "{err}");
}
