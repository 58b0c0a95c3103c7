//! Saving and loading Duet drafter checkpoints: a folder with `config.json` and
//! `model.safetensors`, the reduced vocabulary map stored as one more tensor (CHECKPOINT.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::DrafterConfig;
use crate::error::{DrafterError, Result};
use crate::model::DiffusionModel;
use crate::vocab::Vocab;

/// Name of the hyper-parameter file in a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weight file in a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Tensor holding the reduced vocabulary map (u32, one entry per drafter id, `u32::MAX` for
/// special ids); absent for a full vocabulary.
pub const VOCAB_TENSOR: &str = "vocab.draft_to_verifier";

impl DiffusionModel {
    /// Loads a Duet checkpoint folder written by [`DiffusionModel::save`].
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config: DrafterConfig = read_json(&dir.join(CONFIG_FILE))?;
        config.validate()?;
        let mut tensors = read_safetensors(&dir.join(WEIGHTS_FILE))?;
        let vocab = match tensors.remove(VOCAB_TENSOR) {
            Some(map) => Vocab::reduced(&config, map.to_dtype(DType::U32)?.to_vec1::<u32>()?)?,
            None => Vocab::identity(&config)?,
        };
        Self::from_tensors(&config, vocab, tensors, dir)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| DrafterError::Io { path: dir.to_path_buf(), source })?;
        let config_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|source| DrafterError::Json { path: config_path.clone(), source })?;
        std::fs::write(&config_path, json).map_err(|source| DrafterError::Io { path: config_path, source })?;
        let mut tensors: HashMap<String, Tensor> = self.named_tensors().into_iter().collect();
        if self.vocab.is_reduced() {
            let map = self.vocab.draft_to_verifier().to_vec();
            tensors.insert(VOCAB_TENSOR.into(), Tensor::from_vec(map, self.vocab.len(), &Device::Cpu)?);
        }
        candle_core::safetensors::save(&tensors, dir.join(WEIGHTS_FILE))?;
        Ok(())
    }

    /// Builds a model from named tensors (any float dtype; converted to f32), naming `source` in
    /// errors. Used by every loader.
    pub(crate) fn from_tensors(
        config: &DrafterConfig,
        vocab: Vocab,
        tensors: HashMap<String, Tensor>,
        source: &Path,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        Self::new(config, vocab, vb).map_err(|e| match e {
            DrafterError::Candle(e) => DrafterError::Checkpoint { path: source.to_path_buf(), reason: e.to_string() },
            other => other,
        })
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| DrafterError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| DrafterError::Json { path: path.to_path_buf(), source })
}

/// Reads every tensor of one safetensors file onto the CPU.
pub(crate) fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(DrafterError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| DrafterError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })
}

/// Reads every `*.safetensors` file of a folder (sharded Hugging Face checkpoints), in name order.
pub(crate) fn read_safetensors_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let entries = std::fs::read_dir(dir).map_err(|source| DrafterError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DrafterError::Checkpoint { path: dir.to_path_buf(), reason: "no *.safetensors file".into() });
    }
    let mut tensors = HashMap::new();
    for file in files {
        tensors.extend(read_safetensors(&file)?);
    }
    Ok(tensors)
}
