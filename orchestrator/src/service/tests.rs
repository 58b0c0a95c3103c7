//! The service on the scripted backend: events, stop strings, limits, admission, cancellation.

use std::sync::Arc;
use std::time::Duration;

use super::testing::ScriptedBackend;
use super::*;

const SCRIPT: &str = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n";

fn service(backend: ScriptedBackend, max_running: usize, max_queued: usize) -> GenerationService {
    let config = ServiceConfig { max_running, max_queued, ..ServiceConfig::default() };
    GenerationService::start(Arc::new(backend), config).expect("service")
}

fn scripted() -> GenerationService {
    service(ScriptedBackend::new("scripted", SCRIPT, 512), 2, 4)
}

fn request(prompt: &str) -> GenerationRequest {
    GenerationRequest::new(Prompt::Text(prompt.into()))
}

/// Every event of a generation, blocking.
fn events(mut stream: GenerationStream) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = stream.blocking_next_event() {
        out.push(e);
    }
    out
}

fn run(svc: &GenerationService, req: GenerationRequest) -> (String, Finished) {
    let ev = events(svc.submit(req).expect("admitted"));
    assert!(matches!(ev.first(), Some(Event::Started { .. })), "{ev:?}");
    let text: String = ev.iter().filter_map(|e| if let Event::Delta { text, .. } = e { Some(text.as_str()) } else { None }).collect();
    match ev.last() {
        Some(Event::Finished(f)) => (text, (**f).clone()),
        other => panic!("expected Finished, got {other:?}"),
    }
}

#[test]
fn a_generation_streams_the_whole_script_then_finishes_at_eos() {
    let (text, fin) = run(&scripted(), request("hello"));
    assert_eq!(text, SCRIPT);
    assert_eq!(fin.reason, FinishReason::Eos);
    assert_eq!(fin.usage.prompt_tokens, 5);
    assert_eq!(fin.usage.completion_tokens, SCRIPT.len());
}

#[test]
fn every_mode_gives_the_same_greedy_output() {
    let svc = scripted();
    let mut texts = Vec::new();
    for (mode, block) in [(Mode::Ar, 1), (Mode::Hybrid, 4), (Mode::Hybrid, 16)] {
        let mut r = request("x");
        r.mode = Some(mode);
        r.block_size = Some(block);
        let (text, fin) = run(&svc, r);
        if mode == Mode::Hybrid {
            assert!(fin.usage.drafted_tokens > 0, "the n-gram drafter should find the repeated text");
            assert!(fin.usage.accepted_tokens <= fin.usage.drafted_tokens);
        }
        texts.push(text);
    }
    assert!(texts.iter().all(|t| t == SCRIPT), "{texts:?}");
}

#[test]
fn a_stop_string_spanning_tokens_ends_the_output_before_it() {
    let mut r = request("x");
    r.stop = vec!["\n\n".into(), "never".into()];
    let (text, fin) = run(&scripted(), r);
    assert_eq!(text, "def add(a, b):\n    return a + b");
    assert_eq!(fin.reason, FinishReason::StopSequence);
    // Tokens up to and including the one that completed the stop string.
    assert_eq!(fin.usage.completion_tokens, text.len() + 2);
}

#[test]
fn max_tokens_cuts_the_output_with_its_reason() {
    let mut r = request("x");
    r.max_tokens = Some(7);
    let (text, fin) = run(&scripted(), r);
    assert_eq!(text, &SCRIPT[..7]);
    assert_eq!(fin.reason, FinishReason::MaxTokens);
}

#[test]
fn a_prompt_longer_than_the_context_is_the_first_event() {
    let svc = service(ScriptedBackend::new("scripted", SCRIPT, 16), 1, 1);
    let ev = events(svc.submit(request(&"y".repeat(40))).expect("admitted"));
    match ev.as_slice() {
        [Event::Error(ServiceError::ContextLength(m))] => assert!(m.contains("the prompt has 40 tokens but the context holds 16"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_context_limit_ends_a_long_generation() {
    let svc = service(ScriptedBackend::new("scripted", SCRIPT, 20), 1, 1);
    let (text, fin) = run(&svc, request("0123456789"));
    assert_eq!(fin.reason, FinishReason::ContextFull);
    assert_eq!(text, &SCRIPT[..text.len()]);
}

#[test]
fn unsupported_requests_are_refused_before_admission() {
    let svc = scripted();
    let mut r = request("x");
    r.sampling.temperature = Some(2.8);
    assert!(matches!(svc.submit(r), Err(ServiceError::Invalid(m)) if m.contains("`temperature`")));
    let mut r = request("x");
    r.drafter = Some(DrafterKind::Diffusion);
    assert!(matches!(svc.submit(r), Err(ServiceError::Invalid(m)) if m.contains("not loaded")));
    assert_eq!(svc.load(), LoadSnapshot { running: 0, queued: 0 });
}

#[test]
fn a_full_queue_answers_busy_until_a_generation_ends() {
    let (backend, gate) = ScriptedBackend::new("scripted", SCRIPT, 512).gated();
    let svc = service(backend, 1, 1);
    let a = svc.submit(request("a")).expect("runs");
    let b = svc.submit(request("b")).expect("queued");
    match svc.submit(request("c")) {
        Err(ServiceError::Busy { max_running: 1, max_queued: 1, .. }) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    gate.open();
    for s in [a, b] {
        assert!(matches!(events(s).last(), Some(Event::Finished(_))));
    }
    wait_idle(&svc);
    assert!(svc.submit(request("d")).is_ok());
}

#[test]
fn dropping_the_stream_cancels_the_generation_and_frees_its_slot() {
    let (backend, gate) = ScriptedBackend::new("scripted", &"z".repeat(400), 512).gated();
    let svc = service(backend, 1, 0);
    let a = svc.submit(request("a")).expect("runs");
    assert!(matches!(svc.submit(request("b")), Err(ServiceError::Busy { .. })));
    drop(a);
    gate.open();
    wait_idle(&svc);
    let (text, _) = run(&svc, request("c"));
    assert_eq!(text.len(), 400);
}

#[test]
fn infill_prompts_carry_the_fim_markers() {
    let svc = scripted();
    let r = GenerationRequest::new(Prompt::Infill { prefix: "ab".into(), suffix: "cd".into() });
    let (_, fin) = run(&svc, r);
    // Three marker tokens plus four bytes.
    assert_eq!(fin.usage.prompt_tokens, 7);
}

/// Waits until no generation holds or waits for a slot (the slot frees just after the last event).
fn wait_idle(svc: &GenerationService) {
    for _ in 0..1000 {
        if svc.load() == (LoadSnapshot { running: 0, queued: 0 }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the service never became idle: {:?}", svc.load());
}

#[test]
fn a_generation_past_its_time_limit_ends_with_a_timeout_after_its_output_so_far() {
    let backend = ScriptedBackend::new("slow", &"x".repeat(400), 512).slowed(Duration::from_millis(10));
    let config = ServiceConfig { request_timeout: Some(Duration::from_millis(300)), ..ServiceConfig::default() };
    let svc = GenerationService::start(Arc::new(backend), config).expect("service");
    let mut r = request("x");
    r.mode = Some(Mode::Ar);
    let ev = events(svc.submit(r).expect("admitted"));
    let streamed = ev.iter().filter(|e| matches!(e, Event::Delta { .. })).count();
    assert!(streamed > 0 && streamed < 400, "{streamed} deltas");
    match ev.last() {
        Some(Event::Error(e)) => assert_eq!(e, &ServiceError::Timeout { limit: Duration::from_millis(300) }),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The generation's place is freed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while svc.load().running > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(svc.load(), LoadSnapshot { running: 0, queued: 0 });
}

#[test]
fn a_request_may_ask_for_a_shorter_limit_than_the_service() {
    let backend = ScriptedBackend::new("slow", &"x".repeat(400), 512).slowed(Duration::from_millis(10));
    let svc = GenerationService::start(Arc::new(backend), ServiceConfig::default()).expect("service");
    let mut r = request("x");
    r.mode = Some(Mode::Ar);
    r.timeout = Some(Duration::from_millis(200));
    let ev = events(svc.submit(r).expect("admitted"));
    match ev.last() {
        Some(Event::Error(e)) => assert_eq!(e, &ServiceError::Timeout { limit: Duration::from_millis(200) }),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
