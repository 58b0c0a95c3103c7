//! The network-hop measurement as a report: each mode's in-process and split rows paired, and the
//! Markdown table `duet bench` prints under "Network hops" (the hop cost is split minus in process).

use super::hops::HopRow;

/// The hop cost of one mode: its in-process and split rows side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct HopCost<'a> {
    /// The mode.
    pub mode: &'static str,
    /// In process.
    pub local: &'a HopRow,
    /// Split over loopback gRPC.
    pub split: &'a HopRow,
}

impl HopCost<'_> {
    /// What the hops add to a round, in milliseconds (split minus in process).
    pub fn hop_ms_per_round(&self) -> f64 {
        self.split.ms_per_round - self.local.ms_per_round
    }
}

/// Pairs each mode's in-process row with its split row (modes in the order of `rows`; a mode
/// without both rows is left out).
pub fn costs(rows: &[HopRow]) -> Vec<HopCost<'_>> {
    let mut out: Vec<HopCost<'_>> = Vec::new();
    for r in rows {
        if out.iter().any(|c| c.mode == r.mode) {
            continue;
        }
        let find = |t: &str| rows.iter().find(|x| x.mode == r.mode && x.transport == t);
        if let (Some(local), Some(split)) = (find("in-process"), find("split-grpc")) {
            out.push(HopCost { mode: r.mode, local, split });
        }
    }
    out
}

/// The rows as a Markdown table, one line per mode: milliseconds per round in process and split,
/// what the hops add, and the verifier's and drafter's parts of a round on each side.
pub fn markdown(rows: &[HopRow]) -> String {
    let mut out = String::from(
        "| mode | rounds | tokens | in-process ms/round | split ms/round | hops ms/round | verifier ms/round (in / split) | drafter ms/round (in / split) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for c in costs(rows) {
        let (a, b) = (c.local, c.split);
        let rounds = if a.rounds == b.rounds { a.rounds.to_string() } else { format!("{} / {}", a.rounds, b.rounds) };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:+.2} | {:.2} / {:.2} | {:.3} / {:.3} |\n",
            c.mode,
            rounds,
            a.tokens,
            a.ms_per_round,
            b.ms_per_round,
            c.hop_ms_per_round(),
            a.verifier_ms_per_round,
            b.verifier_ms_per_round,
            a.drafter_ms_per_round,
            b.drafter_ms_per_round
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &'static str, transport: &'static str, ms: f64, rounds: usize) -> HopRow {
        HopRow { mode, transport, rounds, tokens: 40, ms_per_round: ms, verifier_ms_per_round: ms - 1.0, drafter_ms_per_round: 0.25 }
    }

    #[test]
    fn the_table_has_one_line_per_mode_with_split_minus_in_process_as_the_hop_cost() {
        let rows = vec![
            row("ar", "in-process", 80.0, 40),
            row("ar", "split-grpc", 81.5, 40),
            row("hybrid-ngram", "in-process", 100.0, 20),
            row("hybrid-ngram", "split-grpc", 103.25, 21),
        ];
        let costs = costs(&rows);
        assert_eq!(costs.iter().map(|c| c.mode).collect::<Vec<_>>(), ["ar", "hybrid-ngram"]);
        assert!((costs[1].hop_ms_per_round() - 3.25).abs() < 1e-9);
        let md = markdown(&rows);
        assert_eq!(md.lines().count(), 4, "{md}");
        assert!(md.contains("| ar | 40 | 40 | 80.00 | 81.50 | +1.50 | 79.00 / 80.50 | 0.250 / 0.250 |"), "{md}");
        assert!(md.contains("| hybrid-ngram | 20 / 21 | 40 | 100.00 | 103.25 | +3.25 |"), "{md}");
    }

    #[test]
    fn a_mode_missing_one_transport_is_left_out_of_the_table() {
        let rows = vec![row("ar", "in-process", 80.0, 40), row("hybrid-ngram", "in-process", 90.0, 30), row("hybrid-ngram", "split-grpc", 91.0, 30)];
        assert_eq!(costs(&rows).len(), 1);
        assert!(!markdown(&rows).contains("| ar |"));
    }
}
