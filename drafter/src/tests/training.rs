//! The training forward pass has a backward pass through every weight.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::testing::{features, tiny_conditioned_config, tiny_config, tokens};
use crate::{DiffusionModel, ForwardMode, TrainBatch, Vocab, seeded_varmap};

#[test]
fn training_forward_has_gradients_for_every_weight() {
    let device = Device::Cpu;
    for config in [tiny_config(), tiny_conditioned_config()] {
        let varmap = seeded_varmap(&config, 4, &device).expect("varmap");
        let vocab = DiffusionModel::random(&config, 0).expect("vocab source").vocab().clone();
        let model = DiffusionModel::new(&config, vocab, VarBuilder::from_varmap(&varmap, DType::F32, &device))
            .expect("trainable model");
        let (context, block) = (6, 4);
        let mut ids = [tokens(context, 1), tokens(context, 2)].concat();
        ids.splice(context..context, [62, 7, 62, 62]);
        ids.extend([62, 62, 3, 62]);
        let batch = TrainBatch {
            tokens: Tensor::from_vec(ids, (2, context + block), &device).expect("tokens"),
            context_len: context,
            features: config.target.as_ref().map(|t| {
                Tensor::from_vec(features(0, 2 * context, t.feature_dim(), 0), (2, context, t.feature_dim()), &device)
                    .expect("features")
            }),
        };
        let logits = model.forward_train(&batch, ForwardMode::Training).expect("forward");
        assert_eq!(logits.dims(), &[2, block, 64]);
        let targets = Tensor::from_vec(tokens(2 * block, 3), 2 * block, &device).expect("targets");
        let loss = candle_nn::loss::cross_entropy(&logits.reshape((2 * block, 64)).expect("flat"), &targets)
            .expect("loss");
        let grads = loss.backward().expect("backward");
        let vars = varmap.data().lock().expect("lock").clone();
        for (name, var) in vars {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient reaches {name}"));
            let norm = grad.abs().and_then(|g| g.sum_all()?.to_scalar::<f32>()).expect("norm");
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}

#[test]
fn a_trainable_model_drafts_like_a_loaded_one() {
    let device = Device::Cpu;
    let config = tiny_config();
    let varmap = seeded_varmap(&config, 8, &device).expect("varmap");
    let reference = DiffusionModel::random(&config, 8).expect("same seed");
    let vocab: Vocab = reference.vocab().clone();
    let model = DiffusionModel::new(&config, vocab, VarBuilder::from_varmap(&varmap, DType::F32, &device)).expect("model");
    let mut a = model.new_cache().expect("cache");
    let mut b = reference.new_cache().expect("cache");
    a.extend(&model, &tokens(5, 1), None).expect("extend");
    b.extend(&reference, &tokens(5, 1), None).expect("extend");
    let la = model.block_logits(&mut a, &[None; 3]).expect("a");
    let lb = reference.block_logits(&mut b, &[None; 3]).expect("b");
    // The loaded model multiplies by fused, transposed copies of the weights: same maths, other
    // summation order.
    assert!(crate::testing::max_abs_diff(&la, &lb) < 1e-5);
}

#[test]
fn adamw_steps_on_the_training_forward_lower_the_loss() {
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    let device = Device::Cpu;
    let config = tiny_config();
    let varmap = seeded_varmap(&config, 2, &device).expect("varmap");
    let vocab = DiffusionModel::random(&config, 0).expect("vocab source").vocab().clone();
    let model =
        DiffusionModel::new(&config, vocab, VarBuilder::from_varmap(&varmap, DType::F32, &device)).expect("model");
    let (context, block) = (8, 4);
    let clean = tokens(context + block, 5);
    let mut noisy = clean.clone();
    noisy[context..].fill(62);
    let batch = TrainBatch {
        tokens: Tensor::from_vec(noisy, (1, context + block), &device).expect("tokens"),
        context_len: context,
        features: None,
    };
    let targets = Tensor::from_vec(clean[context..].to_vec(), block, &device).expect("targets");
    let loss = |model: &DiffusionModel| {
        let logits = model.forward_train(&batch, ForwardMode::Training).expect("forward");
        candle_nn::loss::cross_entropy(&logits.squeeze(0).expect("squeeze"), &targets).expect("loss")
    };
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-2, ..Default::default() }).expect("adamw");
    let before = loss(&model).to_scalar::<f32>().expect("scalar");
    for _ in 0..10 {
        opt.backward_step(&loss(&model)).expect("step");
    }
    let after = loss(&model).to_scalar::<f32>().expect("scalar");
    assert!(after < before * 0.5, "loss {before} -> {after}");
}
