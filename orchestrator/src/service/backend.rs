//! What the service needs from the loaded models, as a trait so transports can be tested against a
//! scripted stand-in ([`super::testing::ScriptedBackend`]) and served by the real models ([`Models`]).

use std::sync::Arc;

use duet_drafter::{DiffusionModel, SamplerConfig};
use duet_verifier::{ChatMessage, TokenId, Usage, Verifier, VerifierError};

use crate::drafters::{
    ArModelDrafter, DiffusionDrafter, DrafterHealth, DrafterKind, FallbackDrafter, HintPolicy, NgramDrafter,
};
use crate::engine::{Drafter, Mode, VerifierSession};

use super::ServiceError;

/// The FIM marker tokens of Qwen2.5-Coder, in prompt order.
pub const FIM_MARKERS: [&str; 3] = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"];

/// The fill-in-the-middle prompt (prefix, suffix, then the middle to generate), or the error for a
/// model `name` without FIM tokens (`fim` false). Shared by every [`Backend`].
pub fn fim_prompt(name: &str, fim: bool, prefix: &str, suffix: &str) -> Result<String, ServiceError> {
    if !fim {
        return Err(ServiceError::Invalid(format!("`suffix` (fill in the middle) needs a model with FIM tokens; {name} has none")));
    }
    let [p, s, m] = FIM_MARKERS;
    Ok(format!("{p}{prefix}{s}{suffix}{m}"))
}

/// The loaded verifier and drafters, as the generation threads use them. Every method may block on a
/// model thread: call it from a generation thread, never from an async task.
pub trait Backend: Send + Sync + 'static {
    /// The name clients use for the model.
    fn model_name(&self) -> &str;
    /// Context length of one session (prompt plus generated tokens).
    fn ctx_size(&self) -> usize;
    /// Tokenizes text, special-token text included.
    fn tokenize(&self, text: &str) -> Result<Vec<TokenId>, ServiceError>;
    /// Formats chat messages with the model's chat template, ending with an open assistant turn.
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, ServiceError>;
    /// The fill-in-the-middle prompt for the gap between `prefix` and `suffix`.
    fn infill_prompt(&self, prefix: &str, suffix: &str) -> Result<String, ServiceError>;
    /// The bytes of tokens as text.
    fn detokenize(&self, tokens: &[TokenId]) -> Vec<u8>;
    /// Whether a token ends the generation.
    fn is_eog(&self, token: TokenId) -> bool;
    /// Refuses a mode / drafter pair whose models are not loaded.
    fn check(&self, mode: Mode, drafter: DrafterKind) -> Result<(), ServiceError>;
    /// Opens a verifier session (its own KV cache, freed on drop).
    fn open_session(&self) -> Result<Box<dyn VerifierSession + Send>, ServiceError>;
    /// A fresh drafter of this kind for one generation.
    fn new_drafter(&self, kind: DrafterKind) -> Result<Box<dyn Drafter>, ServiceError>;
    /// What the local verifier holds now (sessions, KV cache), when there is one in this process.
    fn verifier_usage(&self) -> Option<Usage> {
        None
    }
    /// Whether the models can serve now; `Err` says why not (a remote verifier that is down).
    /// Health checks report it; requests are not refused on it (they find out themselves).
    fn available(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The diffusion drafter's model and how it samples.
#[derive(Debug, Clone)]
pub struct DiffusionSetup {
    /// The model, shared by every generation (each gets its own context cache).
    pub model: Arc<DiffusionModel>,
    /// Denoising settings.
    pub sampler: SamplerConfig,
    /// Whether a rejected tail seeds the next block.
    pub hints: HintPolicy,
}

/// The real models: a llama.cpp verifier, optionally a small drafting model of the same vocabulary
/// and a diffusion drafter.
#[derive(Debug)]
pub struct Models {
    verifier: Verifier,
    name: String,
    drafting_model: Option<Verifier>,
    diffusion: Option<DiffusionSetup>,
    fim: bool,
}

impl Models {
    /// Checks that the drafters fit the verifier (vocabulary, feature width) and whether the verifier
    /// knows the FIM tokens. Blocks on the model threads.
    pub fn new(
        verifier: Verifier,
        name: String,
        drafting_model: Option<Verifier>,
        diffusion: Option<DiffusionSetup>,
    ) -> Result<Self, ServiceError> {
        let info = verifier.info();
        if let Some(d) = &drafting_model {
            info.check_same_vocabulary(d.info()).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        if let Some(d) = &diffusion {
            d.model.vocab().check_verifier(info.n_vocab).map_err(|e| ServiceError::Invalid(e.to_string()))?;
            if let Some(dim) = d.model.feature_dim()
                && dim != info.n_embd as usize
            {
                return Err(ServiceError::Invalid(format!(
                    "the diffusion drafter is conditioned on hidden states of width {dim} but the verifier's are {} wide; \
                     use the verifier it was trained for",
                    info.n_embd
                )));
            }
        }
        let mut fim = true;
        for marker in FIM_MARKERS {
            fim &= verifier.tokenize(marker, true).map_err(internal)?.len() == 1;
        }
        Ok(Self { verifier, name, drafting_model, diffusion, fim })
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Whether infilling is available.
    pub fn has_fim(&self) -> bool {
        self.fim
    }
}

fn internal(e: VerifierError) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

impl Backend for Models {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn verifier_usage(&self) -> Option<Usage> {
        self.verifier.usage().ok()
    }

    fn ctx_size(&self) -> usize {
        self.verifier.info().ctx_size
    }

    fn tokenize(&self, text: &str) -> Result<Vec<TokenId>, ServiceError> {
        self.verifier.tokenize(text, true).map_err(internal)
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, ServiceError> {
        self.verifier.chat_prompt(messages).map_err(|e| ServiceError::Invalid(format!("applying the chat template: {e}")))
    }

    fn infill_prompt(&self, prefix: &str, suffix: &str) -> Result<String, ServiceError> {
        fim_prompt(&self.name, self.fim, prefix, suffix)
    }

    fn detokenize(&self, tokens: &[TokenId]) -> Vec<u8> {
        self.verifier.info().detokenize(tokens)
    }

    fn is_eog(&self, token: TokenId) -> bool {
        self.verifier.info().is_eog(token)
    }

    fn check(&self, mode: Mode, drafter: DrafterKind) -> Result<(), ServiceError> {
        let missing = |what: &str, flag: &str| {
            Err(ServiceError::Invalid(format!("{what} is not loaded on this server (start `duet serve` with {flag})")))
        };
        match (mode, drafter) {
            (Mode::Ar, _) | (Mode::Hybrid, DrafterKind::Ngram) => Ok(()),
            (Mode::Hybrid, DrafterKind::ArModel) if self.drafting_model.is_none() => {
                missing("`drafter` ar-model", "--drafters ar-model")
            }
            (Mode::Hybrid, DrafterKind::ArModel) => Ok(()),
            (Mode::Hybrid | Mode::Diffusion, DrafterKind::Diffusion) | (Mode::Diffusion, _) => match &self.diffusion {
                None => missing("the diffusion drafter", "--drafters diffusion"),
                Some(d) if mode == Mode::Diffusion && d.model.feature_dim().is_some() => Err(ServiceError::Invalid(
                    "`mode` diffusion needs a standalone drafter, but the loaded one is conditioned on verifier features"
                        .into(),
                )),
                Some(_) => Ok(()),
            },
        }
    }

    fn open_session(&self) -> Result<Box<dyn VerifierSession + Send>, ServiceError> {
        match self.verifier.open_session() {
            Ok(s) => Ok(Box::new(s)),
            Err(e @ VerifierError::NoFreeSession(_)) => Err(ServiceError::Unavailable(e.to_string())),
            Err(e) => Err(internal(e)),
        }
    }

    fn new_drafter(&self, kind: DrafterKind) -> Result<Box<dyn Drafter>, ServiceError> {
        // An in-process drafter's failure may be this generation's own (a context it cannot take),
        // so each generation backs off on its own rather than sharing one health with the others.
        let label = crate::grpc::drafter_factory::kind_name(kind);
        let inner = self.bare_drafter(kind)?;
        Ok(Box::new(FallbackDrafter::new(inner, DrafterHealth::new(label), label)))
    }
}

impl Models {
    fn bare_drafter(&self, kind: DrafterKind) -> Result<Box<dyn Drafter>, ServiceError> {
        match kind {
            DrafterKind::Ngram => Ok(Box::new(NgramDrafter::default())),
            DrafterKind::ArModel => {
                let model = self.drafting_model.as_ref().ok_or_else(|| ServiceError::Invalid("no drafting model".into()))?;
                Ok(Box::new(ArModelDrafter::new(model, self.verifier.info(), 0.0).map_err(internal)?))
            }
            DrafterKind::Diffusion => {
                let d = self.diffusion.as_ref().ok_or_else(|| ServiceError::Invalid("no diffusion drafter".into()))?;
                let drafter = DiffusionDrafter::new(d.model.clone(), d.sampler.clone(), d.hints)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                Ok(Box::new(drafter))
            }
        }
    }
}
