//! `Verifier.MeasureCosts`: the verifier's cost curve c(k) measured where the model runs, so an
//! orchestrator on another machine can draft by it (the cost-aware draft length of
//! `duet orchestrator serve`). Timing from the client side would add the network hops to every
//! block size alike and flatten the curve; the server times the decode calls themselves with
//! `Session::measure_verify_times`, as `duet serve` does in process.
//!
//! The measurement holds the model's thread (every other session waits), so its size is bounded:
//! at most [`MAX_SIZES`] sizes of at most 256 drafts, at most [`MAX_REPEATS`] repetitions, and at
//! most [`MAX_MEASURED_TOKENS`] tokens evaluated in all.

use duet_proto::v1 as pb;
use duet_verifier::Verifier;
use tonic::Status;

use super::convert::{check_tokens, invalid, status_from_verifier};
use crate::engine::{CostCurve, MAX_BLOCK_SIZE};

/// Most sizes one call may time.
pub const MAX_SIZES: usize = 32;
/// Most repetitions of each size.
pub const MAX_REPEATS: u32 = 10;
/// Most tokens one call may evaluate: the sum of (size + 1) over the sizes, times the repetitions.
/// `duet orchestrator serve` asks for about 1800 at the largest block (256).
pub const MAX_MEASURED_TOKENS: usize = 4096;

/// A checked request: what to time.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The context, evaluated first.
    pub context: Vec<u32>,
    /// Sizes to time, ascending, starting at 0.
    pub sizes: Vec<usize>,
    /// Repetitions of each.
    pub repeats: usize,
}

/// Checks a request against the model's vocabulary and context; the error names the field and
/// the limit.
pub fn check(r: pb::MeasureCostsRequest, n_vocab: usize, ctx_size: usize) -> Result<Plan, Status> {
    if r.sizes.len() > MAX_SIZES {
        return Err(invalid("sizes", format!("must hold at most {MAX_SIZES} sizes, got {}", r.sizes.len())));
    }
    if let Some(k) = r.sizes.iter().find(|&&k| k as usize > MAX_BLOCK_SIZE) {
        return Err(invalid("sizes", format!("must each be at most {MAX_BLOCK_SIZE}, got {k}")));
    }
    if r.repeats > MAX_REPEATS {
        return Err(invalid("repeats", format!("must be between 1 and {MAX_REPEATS} (0: {}), got {}", crate::costs::REPEATS, r.repeats)));
    }
    let repeats = if r.repeats == 0 { crate::costs::REPEATS } else { r.repeats as usize };
    let mut sizes: Vec<usize> = r.sizes.iter().map(|&k| k as usize).chain([0]).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let evaluated = sizes.iter().map(|k| k + 1).sum::<usize>() * repeats;
    if evaluated > MAX_MEASURED_TOKENS {
        return Err(invalid(
            "sizes",
            format!("with `repeats` {repeats} would evaluate {evaluated} tokens; at most {MAX_MEASURED_TOKENS} (the sum of size + 1, times the repeats)"),
        ));
    }
    if r.context.is_empty() {
        return Err(invalid("context", "must hold at least one token"));
    }
    let largest = sizes.last().copied().unwrap_or(0);
    let room = ctx_size.saturating_sub(largest + 1);
    if r.context.len() > room {
        return Err(invalid(
            "context",
            format!(
                "must leave room for the largest block ({largest} drafts and the pending token) in the verifier's context of {ctx_size}: at most {room} tokens, got {}",
                r.context.len()
            ),
        ));
    }
    check_tokens("context", &r.context, n_vocab)?;
    Ok(Plan { context: r.context, sizes, repeats })
}

/// Runs a checked plan on a scratch session (blocking: call it on a blocking thread) and answers
/// with the times and the curve.
pub fn run(verifier: &Verifier, plan: Plan) -> Result<pb::MeasureCostsResponse, Status> {
    let mut session = verifier.open_session().map_err(|e| status_from_verifier(&e))?;
    session.prefill(&plan.context).map_err(|e| status_from_verifier(&e))?;
    let seconds = session.measure_verify_times(&plan.sizes, plan.repeats).map_err(|e| status_from_verifier(&e))?;
    drop(session);
    let curve = CostCurve::from_times(&plan.sizes, &seconds).map_err(|e| Status::internal(format!("the measured times: {e}")))?;
    Ok(pb::MeasureCostsResponse {
        sizes: plan.sizes.iter().map(|&k| k as u32).collect(),
        seconds,
        step_s: curve.step_s,
        costs: curve.costs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn req(context: usize, sizes: &[u32], repeats: u32) -> pb::MeasureCostsRequest {
        pb::MeasureCostsRequest { context: vec![1; context], sizes: sizes.to_vec(), repeats }
    }

    #[test]
    fn a_plan_times_zero_too_in_ascending_order_with_two_repeats_by_default() {
        let plan = check(req(10, &[4, 1, 4, 2], 0), 100, 512).expect("valid");
        assert_eq!(plan.sizes, vec![0, 1, 2, 4]);
        assert_eq!(plan.repeats, crate::costs::REPEATS);
        assert_eq!(plan.context.len(), 10);
    }

    #[test]
    fn the_largest_default_request_fits_the_token_budget() {
        let sizes: Vec<u32> = crate::costs::measured_sizes(MAX_BLOCK_SIZE).iter().map(|&k| k as u32).collect();
        check(req(256, &sizes, 0), 100, 4096).expect("duet orchestrator serve's request at block 256");
    }

    #[test]
    fn bad_requests_name_the_field_and_the_limit() {
        let cases = [
            (req(10, &[257], 1), "`sizes`", "at most 256"),
            (req(10, &[1; 33], 1), "`sizes`", "at most 32"),
            (req(10, &[1], 11), "`repeats`", "between 1 and 10"),
            (req(10, &[200, 250], 10), "`sizes`", "at most 4096"),
            (req(0, &[1], 1), "`context`", "at least one token"),
            (req(500, &[16], 1), "`context`", "at most 495"),
            (pb::MeasureCostsRequest { context: vec![100], sizes: vec![1], repeats: 1 }, "`context`", "vocabulary of 100"),
        ];
        for (r, field, limit) in cases {
            let s = check(r, 100, 512).expect_err(field);
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().starts_with(field) && s.message().contains(limit), "{}", s.message());
        }
    }
}
