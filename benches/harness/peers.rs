//! Other engines measured beside Duet's modes: `--peer NAME=URL[,JSON]` names any OpenAI-compatible
//! server (stock llama.cpp's `llama-server` in its plain and speculative configurations, vLLM, TGI…),
//! which then runs every prompt group right after Duet's modes, through its API, streamed and
//! greedy with the same max tokens — so drift on the machine reaches it as it reaches them. Its
//! outputs are compared with Duet's `ar` and reported, never required to match: stock engines are
//! not batch-invariant, so their greedy output may change with what they batch together.

use serde::Serialize;
use serde_json::{Map, Value};

use super::modes::BenchMode;

/// Longest peer name.
pub const MAX_NAME_LEN: usize = 40;

/// A peer server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    /// Its name in reports.
    pub name: &'static str,
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Fields merged into every request body, e.g. llama-server's `{"cache_prompt": false}` so that
    /// it evaluates every prompt rather than reusing the previous request's cache.
    pub extra_body: Map<String, Value>,
}

/// Parses `NAME=URL[,JSON object]` (the URL ends at the first comma).
pub fn parse(arg: &str) -> Result<Peer, String> {
    let form = "the form is NAME=URL[,JSON object], e.g. llama-plain=http://127.0.0.1:8081,{\"cache_prompt\":false}";
    let (name, rest) = arg.split_once('=').ok_or_else(|| format!("`--peer` {arg:?} has no `=`; {form}"))?;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("`--peer` name {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.'"));
    }
    if BenchMode::ALL.iter().any(|m| m.label() == name) {
        return Err(format!("`--peer` name {name:?} is one of Duet's modes; pick another"));
    }
    let (url, json) = match rest.split_once(',') {
        Some((u, j)) => (u, Some(j)),
        None => (rest, None),
    };
    let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.trim_end_matches('/').is_empty()) {
        return Err(format!("`--peer` {name}: the URL must start with http:// or https:// and name a host, got {url:?}"));
    }
    let extra_body = match json {
        None => Map::new(),
        Some(j) => match serde_json::from_str::<Value>(j) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(format!("`--peer` {name}: the extra body must be a JSON object, got {j}")),
            Err(e) => return Err(format!("`--peer` {name}: the extra body is not JSON ({e}): {j}")),
        },
    };
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    Ok(Peer { name, url: url.trim_end_matches('/').to_owned(), extra_body })
}

/// Fails when two peers share a name.
pub fn check_unique(peers: &[Peer]) -> Result<(), String> {
    for (i, p) in peers.iter().enumerate() {
        if peers[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("`--peer` name {:?} is given twice", p.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_parsed_with_its_extra_body() {
        let p = parse(r#"llama-ngram=http://127.0.0.1:8082/,{"cache_prompt":false,"n_probs":0}"#).expect("valid");
        assert_eq!((p.name, p.url.as_str()), ("llama-ngram", "http://127.0.0.1:8082"));
        assert_eq!(p.extra_body.get("cache_prompt"), Some(&Value::Bool(false)));
        assert_eq!(p.extra_body.len(), 2);
        let plain = parse("vllm=https://example.invalid:8000").expect("valid");
        assert!(plain.extra_body.is_empty());
    }

    #[test]
    fn a_bad_peer_is_refused_naming_what_is_wrong() {
        for (arg, says) in [
            ("http://127.0.0.1:8081", "has no `=`"),
            ("=http://127.0.0.1:8081", "name \"\""),
            ("a b=http://x", "must be 1 to"),
            ("ar=http://127.0.0.1:1", "one of Duet's modes"),
            ("p=127.0.0.1:8081", "must start with http://"),
            ("p=http://,{}", "must start with http://"),
            ("p=http://x,[1]", "must be a JSON object"),
            ("p=http://x,{cache_prompt:false}", "is not JSON"),
        ] {
            let e = parse(arg).expect_err(arg);
            assert!(e.contains(says), "{arg}: {e}");
        }
        let twice = [parse("p=http://a").unwrap(), parse("p=http://b").unwrap()];
        assert!(check_unique(&twice).expect_err("duplicate").contains("given twice"));
    }
}
