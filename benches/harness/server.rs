//! Generations through `duet serve`'s OpenAI-compatible API: `POST /v1/completions` with
//! `stream: true`, read as server-sent events, each event's arrival timed like a token delivery in
//! process. Duet's extra request fields pick the mode (`mode`, `drafter`, `block_size`); the usage
//! block (`stream_options.include_usage`) gives the token count and
//! `completion_tokens_details.{accepted,rejected}_prediction_tokens`.

use std::io::{BufRead as _, BufReader};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::modes::{BenchMode, Contender, Transport};
use super::peers::Peer;
use super::runner::PreparedPrompt;
use super::sample::{DeliveryClock, Deliveries, Output, Sample, rate};

/// A non-success HTTP answer, kept typed so callers can tell a busy server (429) from a failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("POST {url} answered {status}: {body}")]
pub struct HttpStatus {
    /// The URL posted to.
    pub url: String,
    /// The status code.
    pub status: u16,
    /// The `Retry-After` header, in seconds.
    pub retry_after_s: Option<u64>,
    /// The answer's body.
    pub body: String,
}

/// A blocking client of one server.
#[derive(Debug, Clone)]
pub struct ServerClient {
    agent: ureq::Agent,
    url: String,
    model: String,
    extra_body: Map<String, Value>,
}

/// What one streamed completion returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The last `finish_reason` seen.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, when the server sent usage.
    pub completion_tokens: Option<usize>,
    /// `usage.completion_tokens_details.accepted_prediction_tokens` (Duet), else llama-server's
    /// `timings.draft_n_accepted`.
    pub accepted_prediction_tokens: Option<usize>,
    /// `usage.completion_tokens_details.rejected_prediction_tokens` (Duet), else llama-server's
    /// `timings.draft_n − timings.draft_n_accepted`.
    pub rejected_prediction_tokens: Option<usize>,
    /// Timing of the events that carried text.
    pub deliveries: Deliveries,
    /// Whether the stream ended with `data: [DONE]` (rather than the connection closing early).
    pub done: bool,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    /// llama-server's own counters, sent with the last chunk.
    #[serde(default)]
    timings: Option<Timings>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The part of llama-server's `timings` that tells its speculative decoding's acceptance.
#[derive(Debug, Deserialize)]
struct Timings {
    draft_n: Option<usize>,
    draft_n_accepted: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    completion_tokens: Option<usize>,
    #[serde(default)]
    completion_tokens_details: Option<UsageDetails>,
}

#[derive(Debug, Deserialize)]
struct UsageDetails {
    accepted_prediction_tokens: Option<usize>,
    rejected_prediction_tokens: Option<usize>,
}

impl ServerClient {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3600)))
            .build()
            .into();
        Self { agent, url: format!("{}/v1/completions", base.trim_end_matches('/')), model: "duet".into(), extra_body: Map::new() }
    }

    /// The same client, naming `model` in its requests (the server's `--served-model-name`).
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = model.to_owned();
        self
    }

    /// The first model the server lists at `/v1/models`.
    pub fn served_model(base: &str) -> anyhow::Result<String> {
        let url = format!("{}/v1/models", base.trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
        let body: serde_json::Value = agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_body()
            .read_json()
            .with_context(|| format!("GET {url}: not JSON"))?;
        body["data"][0]["id"].as_str().map(str::to_owned).with_context(|| format!("GET {url} lists no model"))
    }

    /// The same client, merging `extra` into every request body (a peer's `--peer` JSON).
    pub fn with_extra_body(mut self, extra: &Map<String, Value>) -> Self {
        self.extra_body = extra.clone();
        self
    }

    /// A client of `peer`, naming the model it lists.
    pub fn for_peer(peer: &Peer) -> anyhow::Result<Self> {
        let model = Self::served_model(&peer.url).with_context(|| format!("peer {} at {}", peer.name, peer.url))?;
        Ok(Self::new(&peer.url).with_model(&model).with_extra_body(&peer.extra_body))
    }

    /// The OpenAI fields of a streamed greedy completion, then the extra body.
    fn body(&self, prompt: &str, max_tokens: usize) -> Value {
        let mut body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        for (k, v) in &self.extra_body {
            body[k] = v.clone();
        }
        body
    }

    /// Streams one greedy completion of `prompt` in `mode` (Duet's request fields pick it).
    pub fn complete(&self, mode: BenchMode, prompt: &str, max_tokens: usize, block_size: usize) -> anyhow::Result<Completion> {
        let (mode_field, drafter) = mode.server_fields();
        let mut body = self.body(prompt, max_tokens);
        body["mode"] = json!(mode_field);
        body["block_size"] = json!(block_size);
        if let Some(d) = drafter {
            body["drafter"] = json!(d);
        }
        self.stream(&body)
    }

    /// Streams one greedy completion with the OpenAI fields and the extra body only: what a peer gets.
    pub fn complete_plain(&self, prompt: &str, max_tokens: usize) -> anyhow::Result<Completion> {
        self.stream(&self.body(prompt, max_tokens))
    }

    /// Posts `body` and reads its event stream, timing every event that carries text.
    fn stream(&self, body: &Value) -> anyhow::Result<Completion> {
        let mut clock = DeliveryClock::start();
        let response = self.agent.post(&self.url).send_json(body).with_context(|| format!("POST {}", self.url))?;
        let status = response.status();
        let retry_after_s = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        let mut reader = BufReader::new(response.into_body().into_reader());
        if !status.is_success() {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut text);
            return Err(HttpStatus { url: self.url.clone(), status: status.as_u16(), retry_after_s, body: text.trim().to_owned() }.into());
        }
        let mut out = Completion {
            text: String::new(),
            finish_reason: None,
            completion_tokens: None,
            accepted_prediction_tokens: None,
            rejected_prediction_tokens: None,
            deliveries: Deliveries { ttft_s: 0.0, e2e_s: 0.0, gaps_s: Vec::new(), count: 0 },
            done: false,
        };
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).with_context(|| format!("reading the event stream of {}", self.url))? == 0 {
                break;
            }
            // SSE: only `data:` fields matter here; comments, `event:` and blank lines are skipped.
            let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") else { continue };
            let data = data.trim_start();
            if data == "[DONE]" {
                out.done = true;
                break;
            }
            let chunk: Chunk = serde_json::from_str(data).with_context(|| format!("an event of {} is not a completion chunk: {data}", self.url))?;
            if let Some(e) = chunk.error {
                bail!("{} sent an error event: {e}", self.url);
            }
            let mut delivered = false;
            for c in chunk.choices {
                if !c.text.is_empty() {
                    out.text.push_str(&c.text);
                    delivered = true;
                }
                if c.finish_reason.is_some() {
                    out.finish_reason = c.finish_reason;
                }
            }
            if delivered {
                clock.delivered();
            }
            if let Some(Timings { draft_n: Some(n), draft_n_accepted: Some(a) }) = chunk.timings
                && out.accepted_prediction_tokens.is_none()
            {
                out.accepted_prediction_tokens = Some(a);
                out.rejected_prediction_tokens = Some(n.saturating_sub(a));
            }
            if let Some(u) = chunk.usage {
                out.completion_tokens = u.completion_tokens;
                if let Some(UsageDetails { accepted_prediction_tokens: Some(a), rejected_prediction_tokens: r }) = u.completion_tokens_details {
                    out.accepted_prediction_tokens = Some(a);
                    out.rejected_prediction_tokens = r;
                }
            }
        }
        out.deliveries = clock.finish();
        Ok(out)
    }

    /// Runs one measured generation; `count_tokens` counts the tokens of the text when the server
    /// sent no usage block.
    pub fn sample(
        &self,
        mode: Contender,
        prompt: &PreparedPrompt,
        block_size: usize,
        concurrency: usize,
        count_tokens: &dyn Fn(&str) -> usize,
    ) -> anyhow::Result<Sample> {
        let c = match mode {
            Contender::Duet(m) => self.complete(m, &prompt.text, prompt.max_tokens, block_size),
            Contender::Peer(_) => self.complete_plain(&prompt.text, prompt.max_tokens),
        }
        .with_context(|| format!("{}/{} in {} through {}", prompt.suite, prompt.id, mode.label(), self.url))?;
        let generated_tokens = c.completion_tokens.unwrap_or_else(|| count_tokens(&c.text));
        Ok(Sample {
            suite: prompt.suite.clone(),
            prompt: prompt.id.clone(),
            mode,
            transport: Transport::Server,
            concurrency,
            generated_tokens,
            stop: c.finish_reason.unwrap_or_default(),
            ttft_s: c.deliveries.ttft_s,
            e2e_s: c.deliveries.e2e_s,
            tokens_per_s: rate(generated_tokens, c.deliveries.e2e_s),
            deliveries: c.deliveries.count,
            itl_s: c.deliveries.gaps_s,
            stats: None,
            accepted_prediction_tokens: c.accepted_prediction_tokens,
            rejected_prediction_tokens: c.rejected_prediction_tokens,
            output: Output::Text(c.text.clone()),
            text: c.text,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// A one-connection HTTP server: reads one request, hands its JSON body to the test, answers
    /// with `status` and `events` as a chunked `text/event-stream`.
    fn fake_server(status: &'static str, events: Vec<String>) -> (String, mpsc::Receiver<serde_json::Value>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).expect("read head");
                buf.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            assert!(head.starts_with("post /v1/completions "), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).expect("read body");
            tx.send(serde_json::from_slice(&body).expect("json body")).expect("send");
            write!(stream, "HTTP/1.1 {status}\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").expect("write");
            for e in events {
                write!(stream, "{:x}\r\n{e}\r\n", e.len()).expect("write chunk");
                stream.flush().expect("flush");
            }
            write!(stream, "0\r\n\r\n").expect("write end");
        });
        (url, rx)
    }

    fn event(v: serde_json::Value) -> String {
        format!("data: {v}\n\n")
    }

    #[test]
    fn a_streamed_completion_is_read_and_timed_per_event() {
        let events = vec![
            ": keep-alive comment\n\n".to_string(),
            event(json!({"choices": [{"index": 0, "text": "def", "finish_reason": null}]})),
            event(json!({"choices": [{"index": 0, "text": " add(a, b):", "finish_reason": null}]})),
            event(json!({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})),
            event(json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                "completion_tokens_details": {"accepted_prediction_tokens": 3, "rejected_prediction_tokens": 4}}})),
            "data: [DONE]\n\n".to_string(),
        ];
        let (url, body) = fake_server("200 OK", events);
        let c = ServerClient::new(&url).complete(BenchMode::HybridNgram, "prompt text", 5, 8).expect("completion");
        assert_eq!(c.text, "def add(a, b):");
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(c.completion_tokens, Some(5));
        assert_eq!((c.accepted_prediction_tokens, c.rejected_prediction_tokens), (Some(3), Some(4)));
        assert_eq!(c.deliveries.count, 2);
        assert_eq!(c.deliveries.gaps_s.len(), 1);
        assert!(c.deliveries.ttft_s <= c.deliveries.e2e_s);

        let sent = body.recv().expect("request body");
        assert_eq!(sent["prompt"], "prompt text");
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["temperature"], 0.0);
        assert_eq!(sent["max_tokens"], 5);
        assert_eq!(sent["mode"], "hybrid");
        assert_eq!(sent["drafter"], "ngram");
        assert_eq!(sent["block_size"], 8);
    }

    #[test]
    fn a_peer_gets_only_openai_fields_and_its_extra_body_and_its_draft_counts_are_read() {
        let events = vec![
            event(json!({"choices": [{"text": "x = 1", "finish_reason": null}]})),
            event(json!({"choices": [{"text": "", "finish_reason": "length"}], "usage": {"completion_tokens": 4},
                "timings": {"predicted_n": 4, "draft_n": 6, "draft_n_accepted": 2}})),
            "data: [DONE]\n\n".to_string(),
        ];
        let (url, body) = fake_server("200 OK", events);
        let peer = super::super::peers::parse(&format!("llama-ngram={url},{{\"cache_prompt\":false}}")).expect("peer");
        let client = ServerClient::new(&peer.url).with_model("m.gguf").with_extra_body(&peer.extra_body);
        let c = client.complete_plain("p", 4).expect("completion");
        assert_eq!((c.text.as_str(), c.completion_tokens), ("x = 1", Some(4)));
        assert_eq!((c.accepted_prediction_tokens, c.rejected_prediction_tokens), (Some(2), Some(4)));
        let sent = body.recv().expect("request body");
        assert_eq!(sent["cache_prompt"], false);
        assert_eq!((sent["model"].as_str(), sent["temperature"].as_f64(), sent["stream"].as_bool()), (Some("m.gguf"), Some(0.0), Some(true)));
        for duet_only in ["mode", "drafter", "block_size"] {
            assert!(sent.get(duet_only).is_none(), "a peer was sent Duet's field {duet_only}");
        }
    }

    #[test]
    fn ar_requests_name_no_drafter() {
        let (url, body) = fake_server("200 OK", vec![event(json!({"choices": [{"text": "x"}]})), "data: [DONE]\n\n".into()]);
        let c = ServerClient::new(&url).complete(BenchMode::Ar, "p", 1, 4).expect("completion");
        assert_eq!((c.text.as_str(), c.completion_tokens), ("x", None));
        let sent = body.recv().expect("request body");
        assert_eq!(sent["mode"], "ar");
        assert!(sent.get("drafter").is_none());
    }

    #[test]
    fn an_error_status_is_reported_with_the_body() {
        let (url, _body) = fake_server("429 Too Many Requests", vec!["{\"error\":{\"message\":\"queue full\"}}".into()]);
        let e = ServerClient::new(&url).complete(BenchMode::Ar, "p", 1, 4).expect_err("must fail");
        let msg = format!("{e:#}");
        assert!(msg.contains("429") && msg.contains("queue full"), "{msg}");
    }

    #[test]
    fn an_error_event_mid_stream_fails_the_generation() {
        let events = vec![event(json!({"choices": [{"text": "a"}]})), event(json!({"error": {"message": "verifier failed"}}))];
        let (url, _body) = fake_server("200 OK", events);
        let e = ServerClient::new(&url).complete(BenchMode::Ar, "p", 4, 4).expect_err("must fail");
        assert!(format!("{e:#}").contains("verifier failed"));
    }
}
