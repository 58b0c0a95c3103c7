//! What callers need to know about the loaded model: its vocabulary, end-of-generation tokens, chat
//! template and limits. Built once on the verifier thread at load time and shared read-only.

use std::path::PathBuf;

use crate::{TokenId, VerifierError};

/// One chat message for the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// Facts about the loaded verifier model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The GGUF file.
    pub path: PathBuf,
    /// Model description from llama.cpp (architecture, size, quantisation).
    pub description: String,
    /// Slots of the output layer (logits per position).
    pub n_vocab: usize,
    /// Transformer layers.
    pub n_layer: u32,
    /// Hidden width.
    pub n_embd: u32,
    /// Per-session context length.
    pub ctx_size: usize,
    /// Element type of the KV cache (None where it is not known, as behind gRPC).
    pub kv_cache: Option<crate::KvCacheKind>,
    /// Tokens that end a generation (end of turn, end of text).
    pub eog: Vec<TokenId>,
    /// Text bytes of every token as it appears in generated text (control tokens render empty).
    pub pieces: Vec<Vec<u8>>,
    /// The Jinja chat template from the GGUF metadata, if any.
    pub chat_template: Option<String>,
    /// Wall time the load took, in seconds.
    pub load_s: f64,
}

/// The default system prompt Qwen2.5's template inserts when a chat has none. llama.cpp's built-in
/// ChatML formatter does not, so Duet adds it itself when the model's template carries it.
const QWEN_DEFAULT_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

impl ModelInfo {
    /// Whether `token` ends a generation.
    pub fn is_eog(&self, token: TokenId) -> bool {
        self.eog.contains(&token)
    }

    /// The bytes of a token sequence as text (may end inside a UTF-8 character).
    pub fn detokenize(&self, tokens: &[TokenId]) -> Vec<u8> {
        let mut out = Vec::new();
        for &t in tokens {
            if let Some(p) = self.pieces.get(t as usize) {
                out.extend_from_slice(p);
            }
        }
        out
    }

    /// The messages to format, with the template's default system prompt added where the model's own
    /// template would add it.
    pub fn with_default_system(&self, messages: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(messages.len() + 1);
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        if !has_system && self.chat_template.as_deref().is_some_and(|t| t.contains(QWEN_DEFAULT_SYSTEM)) {
            out.push(ChatMessage { role: "system".into(), content: QWEN_DEFAULT_SYSTEM.into() });
        }
        out.extend_from_slice(messages);
        out
    }

    /// Refuses a pair of models whose vocabularies differ: a draft in one vocabulary means nothing to
    /// a verifier in another. Compares the size and every regular token's text.
    pub fn check_same_vocabulary(&self, other: &ModelInfo) -> Result<(), VerifierError> {
        let regular = |m: &ModelInfo| m.pieces.iter().take_while(|p| !p.is_empty()).count();
        let (a, b) = (regular(self), regular(other));
        if a != b || self.pieces[..a] != other.pieces[..b] {
            let first_diff = self.pieces.iter().zip(&other.pieces).position(|(x, y)| x != y).unwrap_or(a.min(b));
            return Err(VerifierError::Config(format!(
                "vocabularies differ: {} has {a} regular tokens, {} has {b} (first difference at token {first_diff}); \
                 drafter and verifier must share one tokenizer",
                self.path.display(),
                other.path.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pieces: &[&str]) -> ModelInfo {
        ModelInfo {
            path: PathBuf::from("m.gguf"),
            description: String::new(),
            n_vocab: pieces.len(),
            n_layer: 1,
            n_embd: 1,
            ctx_size: 16,
            kv_cache: None,
            eog: vec![],
            pieces: pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
            chat_template: Some(format!("{{{{ '{QWEN_DEFAULT_SYSTEM}' }}}}")),
            load_s: 0.0,
        }
    }

    #[test]
    fn same_vocabulary_is_accepted() {
        assert!(info(&["a", "b", ""]).check_same_vocabulary(&info(&["a", "b", "", "x"])).is_ok());
    }

    #[test]
    fn different_vocabulary_is_refused_with_the_first_difference() {
        let err = info(&["a", "b"]).check_same_vocabulary(&info(&["a", "c"])).unwrap_err().to_string();
        assert!(err.contains("first difference at token 1"), "{err}");
    }

    #[test]
    fn default_system_prompt_is_added_only_when_missing() {
        let m = info(&["a"]);
        let user = ChatMessage { role: "user".into(), content: "hi".into() };
        assert_eq!(m.with_default_system(std::slice::from_ref(&user)).len(), 2);
        let sys = ChatMessage { role: "system".into(), content: "be brief".into() };
        assert_eq!(m.with_default_system(&[sys, user]).len(), 2);
    }
}
