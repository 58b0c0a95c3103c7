//! Pearson's chi-square goodness-of-fit test, for checking that sampled tokens follow an exact
//! distribution. Cells expected fewer than five times are pooled (the usual validity rule of the
//! chi-square approximation).

use std::collections::HashMap;
use std::hash::Hash;

/// The outcome of a goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Pearson's statistic Σ (observed − expected)² / expected over the (pooled) cells.
    pub statistic: f64,
    /// Degrees of freedom: cells − 1.
    pub df: usize,
    /// Probability of a statistic at least this large if the samples follow the distribution.
    pub p_value: f64,
}

/// Tests `counts` (n samples in all) against the exact probabilities `probs`. Outcomes outside
/// `probs` count in the pooled cell with expectation 0, which makes the statistic infinite.
pub fn goodness_of_fit<K: Eq + Hash + Clone>(counts: &HashMap<K, usize>, probs: &HashMap<K, f64>) -> Fit {
    let n: usize = counts.values().sum();
    let n = n as f64;
    let mut cells: Vec<(f64, f64)> = Vec::new(); // (observed, expected)
    let (mut pooled_obs, mut pooled_exp) = (0.0, 0.0);
    for (k, &p) in probs {
        let obs = counts.get(k).copied().unwrap_or(0) as f64;
        if n * p >= 5.0 {
            cells.push((obs, n * p));
        } else {
            pooled_obs += obs;
            pooled_exp += n * p;
        }
    }
    pooled_obs += counts.iter().filter(|(k, _)| !probs.contains_key(*k)).map(|(_, &c)| c as f64).sum::<f64>();
    if pooled_exp >= 5.0 || pooled_obs > 0.0 && pooled_exp == 0.0 {
        cells.push((pooled_obs, pooled_exp));
    } else if let Some(smallest) = cells.iter_mut().min_by(|a, b| a.1.total_cmp(&b.1)) {
        // Too small to stand alone: merge into the least expected cell.
        smallest.0 += pooled_obs;
        smallest.1 += pooled_exp;
    }
    let statistic: f64 = cells.iter().map(|&(o, e)| if e > 0.0 { (o - e) * (o - e) / e } else { f64::INFINITY }).sum();
    let df = cells.len().saturating_sub(1).max(1);
    Fit { statistic, df, p_value: chi_square_survival(statistic, df) }
}

/// P(X ≥ x) for X chi-square distributed with `df` degrees of freedom.
pub fn chi_square_survival(x: f64, df: usize) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    gamma_q(df as f64 / 2.0, x / 2.0)
}

/// The regularised upper incomplete gamma function Q(a, x): a series below a + 1, a continued
/// fraction (modified Lentz) above.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefactor = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * log_prefactor.exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        log_prefactor.exp() * h
    }
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, nine terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survival_matches_tabulated_critical_values() {
        // (x, df, P(X ≥ x)) from standard chi-square tables.
        for (x, df, p) in [(3.841, 1, 0.05), (6.635, 1, 0.01), (18.307, 10, 0.05), (10.828, 1, 0.001), (59.703, 30, 0.001)] {
            let got = chi_square_survival(x, df);
            assert!((got - p).abs() < p * 0.01, "x {x} df {df}: {got} vs {p}");
        }
        assert_eq!(chi_square_survival(f64::INFINITY, 3), 0.0);
        assert!((chi_square_survival(0.0, 4) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_fair_sample_fits_and_a_biased_one_does_not() {
        let probs: HashMap<u32, f64> = [(0, 0.5), (1, 0.3), (2, 0.2)].into_iter().collect();
        let fair: HashMap<u32, usize> = [(0, 500), (1, 300), (2, 200)].into_iter().collect();
        assert!(goodness_of_fit(&fair, &probs).p_value > 0.99);
        let biased: HashMap<u32, usize> = [(0, 420), (1, 330), (2, 250)].into_iter().collect();
        assert!(goodness_of_fit(&biased, &probs).p_value < 0.001);
        let impossible: HashMap<u32, usize> = [(0, 500), (1, 300), (2, 199), (7, 1)].into_iter().collect();
        assert_eq!(goodness_of_fit(&impossible, &probs).p_value, 0.0);
    }
}
