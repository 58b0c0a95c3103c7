//! A generation request, independent of the transport it arrived on, and its checks.

use duet_verifier::ChatMessage;

use crate::drafters::DrafterKind;
use crate::engine::Mode;
use crate::engine::{MAX_BLOCK_SIZE, MAX_TOKENS_LIMIT};

use super::ServiceError;

/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// Largest prompt, in bytes of text (chat: all message contents together; infill: prefix plus
/// suffix). Far above any prompt that fits a context (131,072 tokens is about 0.5 MB of code), so it
/// only stops a client from making the service tokenize a huge text before the context check
/// refuses it. HTTP bodies are capped lower by `--max-body-bytes`; gRPC messages are not.
pub const MAX_PROMPT_BYTES: usize = 32 << 20;

/// What to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text, tokenized as is (special-token text such as `<|im_start|>` becomes the token).
    Text(String),
    /// Chat messages, formatted with the model's chat template (from the GGUF metadata), ending with
    /// an open assistant turn.
    Chat(Vec<ChatMessage>),
    /// Fill in the middle: the model writes what goes between `prefix` and `suffix`, using its FIM
    /// tokens (`<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>` on Qwen2.5-Coder).
    Infill {
        /// Text before the gap.
        prefix: String,
        /// Text after the gap.
        suffix: String,
    },
}

/// Sampling settings as the client sent them. Absent or zero temperature is greedy decoding (unlike
/// OpenAI's default of 1: Duet's answers are reproducible unless a client asks otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    /// Softmax temperature, 0 to [`MAX_TEMPERATURE`]; absent or 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1]; absent or 1 keeps every token.
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens, 0 to [`MAX_TOP_K`]; absent or 0 keeps all.
    pub top_k: Option<u64>,
    /// Seed of the random draws; absent: a fresh one per request. No effect on greedy decoding.
    pub seed: Option<u64>,
}

/// Largest temperature a request may ask for (OpenAI's limit).
pub const MAX_TEMPERATURE: f64 = 2.0;
/// Largest `top_k` (beyond a few thousand it keeps every token that matters anyway).
pub const MAX_TOP_K: u64 = 100_000;

impl Sampling {
    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature.unwrap_or(0.0) == 0.0
    }

    /// Checks every field against its limit; the message names the field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&t))
        {
            return Err(ServiceError::Invalid(format!("`temperature` must be between 0 and {MAX_TEMPERATURE}, got {t}")));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ServiceError::Invalid(format!("`top_p` must be in (0, 1], got {p}")));
        }
        if let Some(k) = self.top_k
            && k > MAX_TOP_K
        {
            return Err(ServiceError::Invalid(format!("`top_k` must be between 0 and {MAX_TOP_K}, got {k}")));
        }
        Ok(())
    }

    /// The verifier's settings for this request; `fresh_seed` when the client sent none.
    pub fn params(&self, fresh_seed: u64) -> duet_verifier::SamplingParams {
        duet_verifier::SamplingParams {
            temperature: self.temperature.unwrap_or(0.0) as f32,
            top_k: self.top_k.unwrap_or(0) as usize,
            top_p: self.top_p.unwrap_or(1.0) as f32,
            seed: self.seed.unwrap_or(fresh_seed),
        }
    }
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate; `None`: until the context is full (at most 65536).
    pub max_tokens: Option<usize>,
    /// `ar`, `hybrid` or `diffusion`; `None`: the service default.
    pub mode: Option<Mode>,
    /// The drafter of hybrid mode; `None`: the service default.
    pub drafter: Option<DrafterKind>,
    /// Most draft tokens per round; `None`: the service default.
    pub block_size: Option<usize>,
    /// The output ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Longest the generation may take from admission (e.g. the gRPC deadline); `None`: the
    /// service's limit. The shorter of the two applies.
    pub timeout: Option<std::time::Duration>,
}

impl GenerationRequest {
    /// A request with every optional field at its default.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            max_tokens: None,
            mode: None,
            drafter: None,
            block_size: None,
            stop: Vec::new(),
            sampling: Sampling::default(),
            timeout: None,
        }
    }

    /// Checks every field that can be checked without the model.
    pub fn validate(&self) -> Result<(), ServiceError> {
        match &self.prompt {
            Prompt::Text(t) if t.is_empty() => return Err(invalid("`prompt` must not be empty")),
            Prompt::Chat(m) if m.is_empty() => return Err(invalid("`messages` must not be empty")),
            Prompt::Chat(messages) => {
                for (i, m) in messages.iter().enumerate() {
                    if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                        return Err(ServiceError::Invalid(format!(
                            "`messages[{i}].role` must be system, user or assistant, got `{}`",
                            m.role
                        )));
                    }
                }
            }
            Prompt::Infill { prefix, suffix } if prefix.is_empty() && suffix.is_empty() => {
                return Err(invalid("`prompt` and `suffix` must not both be empty"));
            }
            _ => {}
        }
        let (field, bytes) = match &self.prompt {
            Prompt::Text(t) => ("prompt", t.len()),
            Prompt::Chat(m) => ("messages", m.iter().map(|m| m.content.len()).sum()),
            Prompt::Infill { prefix, suffix } => ("prompt", prefix.len() + suffix.len()),
        };
        if bytes > MAX_PROMPT_BYTES {
            return Err(ServiceError::Invalid(format!(
                "`{field}` must be at most {MAX_PROMPT_BYTES} bytes of text, got {bytes}"
            )));
        }
        if let Some(n) = self.max_tokens
            && !(1..=MAX_TOKENS_LIMIT).contains(&n)
        {
            return Err(ServiceError::Invalid(format!(
                "`max_tokens` must be between 1 and {MAX_TOKENS_LIMIT}, got {n}"
            )));
        }
        if let Some(k) = self.block_size
            && !(1..=MAX_BLOCK_SIZE).contains(&k)
        {
            return Err(ServiceError::Invalid(format!("`block_size` must be between 1 and {MAX_BLOCK_SIZE}, got {k}")));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(ServiceError::Invalid(format!(
                "`stop` holds at most {MAX_STOP_STRINGS} strings, got {}",
                self.stop.len()
            )));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_LEN) {
            return Err(ServiceError::Invalid(format!(
                "`stop` strings are at most {MAX_STOP_LEN} bytes, got one of {}",
                s.len()
            )));
        }
        self.sampling.validate()?;
        if self.mode == Some(Mode::Diffusion) && !self.sampling.is_greedy() {
            return Err(invalid(
                "`temperature` > 0 needs mode `ar` or `hybrid`: diffusion-only output is the drafter's own, drafted at \
                 the server's --draft-temperature",
            ));
        }
        Ok(())
    }
}

fn invalid(msg: &str) -> ServiceError {
    ServiceError::Invalid(msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> GenerationRequest {
        GenerationRequest::new(Prompt::Text("hi".into()))
    }

    #[test]
    fn greedy_settings_pass() {
        let mut r = text();
        r.sampling = Sampling { temperature: Some(0.0), top_p: Some(1.0), top_k: None, seed: Some(7) };
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn sampling_settings_within_their_limits_pass_and_reach_the_verifier() {
        let mut r = text();
        r.sampling = Sampling { temperature: Some(0.7), top_p: Some(0.9), top_k: Some(40), seed: None };
        assert_eq!(r.validate(), Ok(()));
        let p = r.sampling.params(99);
        assert_eq!((p.temperature, p.top_p, p.top_k, p.seed), (0.7, 0.9, 40, 99));
    }

    #[test]
    fn sampling_values_out_of_range_name_the_field_and_the_limit() {
        let mut r = text();
        r.sampling.temperature = Some(2.5);
        assert!(r.validate().expect_err("refused").to_string().contains("`temperature` must be between 0 and 2"));
        let mut r = text();
        r.sampling.top_p = Some(0.0);
        assert!(r.validate().expect_err("refused").to_string().contains("`top_p` must be in (0, 1]"));
        let mut r = text();
        r.sampling.top_k = Some(MAX_TOP_K + 1);
        assert!(r.validate().expect_err("refused").to_string().contains("`top_k` must be between 0 and 100000"));
        let mut r = text();
        r.mode = Some(Mode::Diffusion);
        r.sampling.temperature = Some(0.5);
        assert!(r.validate().expect_err("refused").to_string().contains("needs mode `ar` or `hybrid`"));
    }

    #[test]
    fn out_of_range_limits_name_the_field_and_the_limit() {
        let mut r = text();
        r.max_tokens = Some(0);
        assert!(r.validate().expect_err("refused").to_string().contains("`max_tokens` must be between 1 and 65536"));
        let mut r = text();
        r.block_size = Some(999);
        assert!(r.validate().expect_err("refused").to_string().contains("`block_size` must be between 1 and 256"));
        let mut r = text();
        r.stop = vec!["x".into(); 17];
        assert!(r.validate().expect_err("refused").to_string().contains("`stop` holds at most 16"));
    }

    #[test]
    fn an_oversized_prompt_names_the_field_and_the_limit() {
        let r = GenerationRequest::new(Prompt::Text("x".repeat(MAX_PROMPT_BYTES + 1)));
        let e = r.validate().expect_err("refused").to_string();
        assert!(e.starts_with("`prompt` must be at most 33554432 bytes"), "{e}");
        let big = ChatMessage { role: "user".into(), content: "x".repeat(MAX_PROMPT_BYTES / 2 + 1) };
        let r = GenerationRequest::new(Prompt::Chat(vec![big.clone(), big]));
        assert!(r.validate().expect_err("refused").to_string().starts_with("`messages` must be at most"));
    }

    #[test]
    fn unknown_chat_roles_are_refused() {
        let r = GenerationRequest::new(Prompt::Chat(vec![ChatMessage { role: "tool".into(), content: "x".into() }]));
        assert!(r.validate().expect_err("refused").to_string().contains("`messages[0].role`"));
    }
}
