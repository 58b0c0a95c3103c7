//! Prompt suites: JSONL files with one `{id, prompt | messages, max_tokens}` object per line, used
//! by `duet eval-drafter` and `duet bench`.

use std::path::Path;

use anyhow::{Context as _, bail};
use duet_verifier::{ChatMessage, TokenId, Verifier};
use serde::Deserialize;

/// One chat message of a suite line.
#[derive(Debug, Clone, Deserialize)]
pub struct SuiteMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One prompt of a suite.
#[derive(Debug, Clone, Deserialize)]
pub struct SuitePrompt {
    /// Name of the prompt.
    pub id: String,
    /// Completion-style prompt text.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages, formatted with the model's chat template.
    #[serde(default)]
    pub messages: Option<Vec<SuiteMessage>>,
    /// Tokens to generate for it.
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

impl SuitePrompt {
    /// The prompt's tokens as the verifier sees them.
    pub fn tokens(&self, verifier: &Verifier) -> anyhow::Result<Vec<TokenId>> {
        Ok(verifier.tokenize(&self.text(verifier)?, true)?)
    }

    /// The full prompt text: `prompt` as is, or `messages` through the verifier's chat template
    /// (ending with an open assistant turn).
    pub fn text(&self, verifier: &Verifier) -> anyhow::Result<String> {
        Ok(match (&self.prompt, &self.messages) {
            (Some(p), None) => p.clone(),
            (None, Some(m)) => verifier.chat_prompt(
                &m.iter().map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() }).collect::<Vec<_>>(),
            )?,
            _ => bail!("prompt {}: give exactly one of `prompt` and `messages`", self.id),
        })
    }
}

/// Reads a suite file; every line must parse.
pub fn load(path: &Path) -> anyhow::Result<Vec<SuitePrompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading suite {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let p: SuitePrompt = serde_json::from_str(line).with_context(|| format!("{}:{}: not a suite line", path.display(), i + 1))?;
        if p.prompt.is_some() == p.messages.is_some() {
            bail!("{}:{}: give exactly one of `prompt` and `messages`", path.display(), i + 1);
        }
        out.push(p);
    }
    if out.is_empty() {
        bail!("suite {} has no prompts", path.display());
    }
    Ok(out)
}
