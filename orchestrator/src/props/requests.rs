//! The HTTP request parsers and the service's request checks on arbitrary input.

use duet_verifier::ChatMessage;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{any_json, body_of};
use crate::engine::{MAX_BLOCK_SIZE, MAX_TOKENS_LIMIT};
use crate::http::ApiError;
use crate::http::request::{self, Parsed};
use crate::service::{GenerationRequest, Prompt, Sampling};

const COMPLETION: &[&str] = &[
    "prompt", "suffix", "logprobs", "echo", "best_of", "model", "max_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "user", "mode", "drafter",
    "block_size",
];
const CHAT: &[&str] = &[
    "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format",
    "modalities", "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
    "user", "mode", "drafter", "block_size", "metadata",
];

fn text() -> BoxedStrategy<Value> {
    prop_oneof![Just(String::new()), ".{0,16}", Just("fn main() {".to_owned())].prop_map(Value::String).boxed()
}

fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![Just("user"), Just("system"), Just("assistant"), Just("developer"), Just("tool")];
    let content = prop_oneof![
        text(),
        Just(Value::Null),
        text().prop_map(|t| json!([{"type": "text", "text": t}])),
        Just(json!([{"type": "image_url", "image_url": {"url": "x"}}])),
    ];
    (role, content).prop_map(|(r, c)| json!({"role": r, "content": c})).boxed()
}

/// Values of the right type, in and out of range, so parsing gets past the type checks.
fn plausible(field: &str) -> BoxedStrategy<Value> {
    match field {
        "prompt" => prop_oneof![text(), prop::collection::vec(text(), 0..3).prop_map(Value::Array)].boxed(),
        "suffix" | "user" => text(),
        "model" => prop_oneof![Just(json!("scripted-0.5b")), text()].boxed(),
        "max_tokens" | "max_completion_tokens" => prop_oneof![
            -2i64..20,
            Just(MAX_TOKENS_LIMIT as i64),
            Just(MAX_TOKENS_LIMIT as i64 + 1),
            any::<i64>()
        ]
        .prop_map(Value::from)
        .boxed(),
        "block_size" => prop_oneof![-1i64..10, Just(MAX_BLOCK_SIZE as i64 + 1)].prop_map(Value::from).boxed(),
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
            prop_oneof![Just(0.0), Just(1.0), -1.0f64..3.0].prop_map(Value::from).boxed()
        }
        "n" | "best_of" | "top_logprobs" => (0i64..3).prop_map(Value::from).boxed(),
        "logprobs" => prop_oneof![Just(Value::Null), Just(json!(false)), Just(json!(true)), Just(json!(2))].boxed(),
        "stream" | "echo" => any::<bool>().prop_map(Value::from).boxed(),
        "stream_options" => any::<bool>().prop_map(|b| json!({"include_usage": b})).boxed(),
        "stop" => prop_oneof![text(), prop::collection::vec(text(), 0..20).prop_map(Value::Array)].boxed(),
        "logit_bias" | "metadata" => Just(json!({})).boxed(),
        "seed" => any::<i64>().prop_map(Value::from).boxed(),
        "mode" => prop_oneof![Just("ar"), Just("hybrid"), Just("diffusion"), Just("fast")].prop_map(Value::from).boxed(),
        "drafter" => prop_oneof![Just("ngram"), Just("diffusion"), Just("ar-model"), Just("gpt")].prop_map(Value::from).boxed(),
        "messages" => prop::collection::vec(message(), 0..4).prop_map(Value::Array).boxed(),
        "tools" => prop_oneof![Just(json!([])), Just(json!([{"type": "function"}]))].boxed(),
        "tool_choice" => prop_oneof![Just(json!("auto")), Just(json!("required"))].boxed(),
        "response_format" => prop_oneof![Just(json!({"type": "text"})), Just(json!({"type": "json_object"}))].boxed(),
        "modalities" => prop_oneof![Just(json!(["text"])), Just(json!(["audio"]))].boxed(),
        _ => any_json().boxed(),
    }
}

/// `/v1/completions` bodies: fields absent, of any value, or plausible.
pub(crate) fn completion_body() -> impl Strategy<Value = Map<String, Value>> {
    body_of(COMPLETION, plausible)
}

/// `/v1/chat/completions` bodies: fields absent, of any value, or plausible.
pub(crate) fn chat_body() -> impl Strategy<Value = Map<String, Value>> {
    body_of(CHAT, plausible)
}

/// The outcome every input must have: a request the service accepts, or a 4xx naming a field (one the
/// client sent, or a required one), or one about the body as a whole.
fn well_behaved(result: Result<Parsed, ApiError>, body: Option<&Map<String, Value>>) -> Result<(), TestCaseError> {
    match result {
        Ok(parsed) => {
            prop_assert_eq!(parsed.request.validate(), Ok(()));
            prop_assert!(parsed.request.max_tokens.is_none_or(|n| (1..=MAX_TOKENS_LIMIT).contains(&n)));
            prop_assert!(parsed.request.block_size.is_none_or(|k| (1..=MAX_BLOCK_SIZE).contains(&k)));
        }
        Err(e) => {
            prop_assert!(e.status.is_client_error(), "{} {}", e.status, e.message);
            prop_assert_eq!(e.kind, "invalid_request_error");
            match (&e.param, body) {
                (Some(param), Some(body)) => {
                    let top = param.split(['.', '[']).next().unwrap_or_default();
                    // An unknown field is named whole (its name may hold '.' or '[').
                    let named = body.contains_key(param.as_str())
                        || body.contains_key(top)
                        || ["prompt", "messages"].contains(&top);
                    prop_assert!(named, "param {param:?} is not a field of {body:?}: {}", e.message);
                    prop_assert!(e.message.contains(&format!("`{param}")), "{} does not name {param}", e.message);
                }
                (Some(_), None) => {}
                (None, _) => prop_assert!(e.message.starts_with("the request body"), "no param: {}", e.message),
            }
        }
    }
    Ok(())
}

/// A JSON body with a few bytes changed, dropped or cut off.
fn mangled(body: impl Strategy<Value = Map<String, Value>>) -> impl Strategy<Value = Vec<u8>> {
    (body, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)).prop_map(|(b, edits)| {
        let mut bytes = Value::Object(b).to_string().into_bytes();
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        bytes
    })
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        mangled(body_of(COMPLETION, plausible)),
        mangled(body_of(CHAT, plausible)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_parse_or_get_a_4xx(bytes in any_bytes()) {
        well_behaved(request::completion(&bytes), None)?;
        well_behaved(request::chat(&bytes), None)?;
    }

    #[test]
    fn any_completion_body_parses_or_gets_a_4xx_naming_a_field(body in body_of(COMPLETION, plausible)) {
        let bytes = Value::Object(body.clone()).to_string();
        well_behaved(request::completion(bytes.as_bytes()), Some(&body))?;
    }

    #[test]
    fn any_chat_body_parses_or_gets_a_4xx_naming_a_field(body in body_of(CHAT, plausible)) {
        let bytes = Value::Object(body.clone()).to_string();
        well_behaved(request::chat(bytes.as_bytes()), Some(&body))?;
    }

    #[test]
    fn any_json_value_parses_or_gets_a_4xx(value in any_json()) {
        let bytes = value.to_string();
        let body = value.as_object();
        well_behaved(request::completion(bytes.as_bytes()), body)?;
        well_behaved(request::chat(bytes.as_bytes()), body)?;
    }

    #[test]
    fn an_unknown_field_is_always_refused_by_name(body in body_of(COMPLETION, plausible), key in "[a-z_ ]{1,12}") {
        prop_assume!(!COMPLETION.contains(&key.as_str()));
        let mut body = body;
        body.insert(key.clone(), Value::Null);
        let bytes = Value::Object(body.clone()).to_string();
        let e = request::completion(bytes.as_bytes()).expect_err("unknown field");
        // Another bad field may be reported first; an unknown one never passes.
        prop_assert!(e.status.is_client_error());
        well_behaved(Err(e), Some(&body))?;
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(depth in 0usize..5000, field in prop::sample::select(COMPLETION)) {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let bytes = format!(r#"{{"prompt": "x", "{field}": {nested}}}"#);
        well_behaved(request::completion(bytes.as_bytes()), None)?;
    }

    #[test]
    fn the_service_check_never_panics_and_names_the_field(request in any_request()) {
        if let Err(e) = request.validate() {
            let m = e.to_string();
            prop_assert!(m.starts_with('`'), "{m}");
        }
    }
}

fn any_f64() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(0.0), Just(1.0), any::<f64>()])
}

fn any_request() -> impl Strategy<Value = GenerationRequest> {
    let chat = prop::collection::vec(("[a-z]{0,9}", ".{0,8}"), 0..3)
        .prop_map(|m| Prompt::Chat(m.into_iter().map(|(role, content)| ChatMessage { role, content }).collect()));
    let prompt = prop_oneof![
        ".{0,8}".prop_map(Prompt::Text),
        chat,
        (".{0,4}", ".{0,4}").prop_map(|(prefix, suffix)| Prompt::Infill { prefix, suffix }),
    ];
    let sizes = prop::option::of(prop_oneof![0usize..300, any::<usize>()]);
    let top_k = any::<Option<u64>>();
    (prompt, sizes.clone(), sizes, prop::collection::vec(".{0,300}", 0..20), any_f64(), any_f64(), top_k, any::<Option<u64>>())
        .prop_map(|(prompt, max_tokens, block_size, stop, temperature, top_p, top_k, seed)| {
            let mut r = GenerationRequest::new(prompt);
            r.max_tokens = max_tokens;
            r.block_size = block_size;
            r.stop = stop;
            r.sampling = Sampling { temperature, top_p, top_k, seed };
            r
        })
}
