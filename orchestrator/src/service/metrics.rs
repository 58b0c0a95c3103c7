//! The generation metrics every transport shares, recorded through the `metrics` facade (a no-op
//! until a recorder is installed, e.g. the Prometheus exporter of `duet serve`).

/// Time from a request's admission to its first token, in seconds (histogram).
pub const TIME_TO_FIRST_TOKEN: &str = "duet_time_to_first_token_seconds";
/// Time between consecutive output tokens, in seconds (histogram; a batch of k tokens accepted
/// together after t seconds counts as k gaps of t/k).
pub const INTER_TOKEN_LATENCY: &str = "duet_inter_token_latency_seconds";
/// Draft tokens sent to the verifier (counter, by drafter).
pub const DRAFTED_TOKENS: &str = "duet_drafted_tokens_total";
/// Draft tokens the verifier accepted (counter, by drafter).
pub const ACCEPTED_TOKENS: &str = "duet_accepted_tokens_total";
/// Draft tokens accepted per verified block (histogram, by drafter).
pub const ACCEPTED_LENGTH: &str = "duet_accepted_length_tokens";
/// Draft tokens sent per round of a hybrid generation, 0 when the round was a plain step (histogram,
/// by drafter): what the cost-aware draft length chose.
pub const DRAFT_LENGTH: &str = "duet_draft_length_tokens";
/// Wall time of one drafter proposal, in seconds (histogram, by drafter).
pub const DRAFTER_STEP: &str = "duet_drafter_step_seconds";
/// Rounds that went without a draft and took a plain verifier step instead (counter, by drafter
/// and reason: `error`, `timeout`, or `backoff` while a failed drafter is left alone).
pub const DRAFTER_FALLBACKS: &str = "duet_drafter_fallbacks_total";
/// Wall time of one verifier round (AR step or block verification), in seconds (histogram).
pub const VERIFIER_STEP: &str = "duet_verifier_step_seconds";
/// The factor by which the last finished generation's own verify calls found a block's cost over a
/// plain step above (> 1) or below (< 1) the cost curve measured at start-up (gauge, by drafter;
/// cost-aware hybrid generations only).
pub const COST_SCALE: &str = "duet_cost_scale_ratio";
/// Generations holding a session now (gauge).
pub const SESSIONS_IN_FLIGHT: &str = "duet_sessions_in_flight";
/// Generations waiting for a session (gauge).
pub const QUEUED_REQUESTS: &str = "duet_queued_requests";
/// Generations that ended, by how (counter: eos, stop_sequence, max_tokens, context_full, error,
/// cancelled).
pub const GENERATIONS: &str = "duet_generations_total";
/// Tokens generated (counter).
pub const GENERATED_TOKENS: &str = "duet_generated_tokens_total";

/// Verifier sessions open (gauge; read from the verifier when metrics are scraped).
pub const VERIFIER_SESSIONS: &str = "duet_verifier_sessions";
/// Tokens in the verifier's KV cache over every session (gauge).
pub const VERIFIER_KV_TOKENS: &str = "duet_verifier_kv_tokens";
/// Decode calls that evaluated verification blocks (counter).
pub const VERIFIER_DECODES: &str = "duet_verifier_decodes_total";
/// Verification blocks evaluated (counter): above the decodes when concurrent sessions shared one.
pub const VERIFIER_BLOCKS: &str = "duet_verifier_blocks_total";
/// Sessions moved to a lower sequence id when another closed, keeping shared decode calls in one
/// micro-batch (counter).
pub const VERIFIER_SESSION_MOVES: &str = "duet_verifier_session_moves_total";

/// Publishes what the verifier reported.
pub fn record_verifier_usage(u: &duet_verifier::Usage) {
    metrics::gauge!(VERIFIER_SESSIONS).set(u.sessions as f64);
    metrics::gauge!(VERIFIER_KV_TOKENS).set(u.kv_tokens as f64);
    metrics::counter!(VERIFIER_DECODES).absolute(u.verify_decodes);
    metrics::counter!(VERIFIER_BLOCKS).absolute(u.verify_blocks);
    metrics::counter!(VERIFIER_SESSION_MOVES).absolute(u.session_moves);
}

/// Histogram buckets for latencies in seconds: 1 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Histogram buckets for accepted lengths in tokens.
pub const TOKENS_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];
