//! The plots of a run, as SVG files (plotters' SVG backend; text is left to the viewer's fonts):
//! speedup over `ar` per suite and mode, acceptance by block position, the latency distributions
//! and the verifier cost curve. The peers (`--peer`) are drawn beside Duet's modes as Duet's main
//! transport measured them (in process when it ran).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::cost::CostPoint;
use super::metrics::Summary;
use super::modes::{BenchMode, Contender, Transport};
use super::sample::Sample;

const SIZE: (u32, u32) = (960, 540);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// Every contender of the run in report order, so that each keeps one colour across the plots.
struct Legend(Vec<Contender>);

impl Legend {
    fn new(summaries: &[Summary]) -> Self {
        let mut v: Vec<Contender> = BenchMode::ALL.iter().map(|&m| Contender::Duet(m)).collect();
        let mut peers: Vec<Contender> = summaries.iter().map(|s| s.key.mode).filter(|m| m.is_peer()).collect();
        peers.sort();
        peers.dedup();
        v.extend(peers);
        Self(v)
    }

    fn colour(&self, c: Contender) -> RGBColor {
        pick(self.0.iter().position(|&m| m == c).unwrap_or(0))
    }

    /// The contenders present, in legend order.
    fn present(&self, has: impl Fn(Contender) -> bool) -> Vec<Contender> {
        self.0.iter().copied().filter(|&c| has(c)).collect()
    }
}

fn pick(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// Writes every plot into `dir`; returns the file names.
pub fn write_all(dir: &Path, summaries: &[Summary], samples: &[Sample], cost: &[CostPoint]) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let legend = Legend::new(summaries);
    let duet = Transport::beside_peers(summaries.iter().any(|s| s.key.transport == Transport::InProcess));
    let place = |mode: Contender, transport: Transport| if mode.is_peer() { duet } else { transport };
    let mut cells: BTreeMap<(Transport, usize), Vec<&Summary>> = BTreeMap::new();
    for s in summaries {
        cells.entry((place(s.key.mode, s.key.transport), s.key.concurrency)).or_default().push(s);
    }
    for ((transport, conc), cell) in &cells {
        let name = format!("speedup-{}-c{conc}.svg", transport.label());
        speedup(&dir.join(&name), &format!("Speedup over ar per prompt ({}, concurrency {conc})", transport.label()), cell, &legend)?;
        files.push(name);
    }
    // Acceptance and latency at the most common setting: in process, one generation at a time.
    let main = cells.keys().find(|(t, c)| *t == Transport::InProcess && *c == 1).or_else(|| cells.keys().next()).copied();
    if let Some((transport, conc)) = main {
        let cell = &cells[&(transport, conc)];
        acceptance(&dir.join("acceptance.svg"), cell, &legend)?;
        files.push("acceptance.svg".into());
        let chosen: Vec<&Sample> = samples.iter().filter(|s| place(s.mode, s.transport) == transport && s.concurrency == conc).collect();
        latency(&dir.join("latency.svg"), &chosen, &format!("{}, concurrency {conc}", transport.label()), &legend)?;
        files.push("latency.svg".into());
    }
    if cost.len() > 1 {
        cost_curve(&dir.join("cost-curve.svg"), cost)?;
        files.push("cost-curve.svg".into());
    }
    Ok(files)
}

/// Grouped bars: one group per suite, one bar per mode (median speedup), a black tick at the worst.
fn speedup(path: &Path, title: &str, cell: &[&Summary], legend: &Legend) -> anyhow::Result<()> {
    let suites: Vec<&str> = {
        let mut v: Vec<&str> = cell.iter().map(|s| s.key.suite.as_str()).collect();
        v.dedup();
        v
    };
    let modes = legend.present(|m| cell.iter().any(|s| s.key.mode == m));
    let top = cell.iter().filter_map(|s| s.speedup_median).fold(1.0f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = suites.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(err)?;
    let names = suites.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * suites.len() + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 { names.get(i).map_or(String::new(), |s| s.to_string()) } else { String::new() }
        })
        .y_desc("speedup (× ar tok/s)")
        .draw()
        .map_err(err)?;
    let width = 0.8 / modes.len().max(1) as f64;
    for (j, &mode) in modes.iter().enumerate() {
        let c = legend.colour(mode);
        let bars: Vec<(f64, f64, f64, Option<f64>)> = suites
            .iter()
            .enumerate()
            .filter_map(|(i, suite)| {
                let s = cell.iter().find(|s| s.key.suite == *suite && s.key.mode == mode)?;
                let x0 = i as f64 + 0.1 + j as f64 * width;
                Some((x0, x0 + width * 0.9, s.speedup_median?, s.speedup_worst))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x0, x1, y, _)| Rectangle::new([(x0, 0.0), (x1, y)], c.filled())))
            .map_err(err)?
            .label(mode.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart
            .draw_series(bars.iter().filter_map(|&(x0, x1, _, w)| Some(PathElement::new(vec![(x0, w?), (x1, w?)], BLACK.stroke_width(3)))))
            .map_err(err)?;
    }
    chart.draw_series(std::iter::once(PathElement::new(vec![(0.0, 1.0), (n, 1.0)], BLACK.mix(0.6)))).map_err(err)?;
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(err)?;
    root.present().map_err(err)
}

/// One line per (suite, verified mode): acceptance share at each block position.
fn acceptance(path: &Path, cell: &[&Summary], legend: &Legend) -> anyhow::Result<()> {
    let lines: Vec<&&Summary> = cell.iter().filter(|s| !s.acceptance_by_position.is_empty()).collect();
    let longest = lines.iter().map(|s| s.acceptance_by_position.len()).max().unwrap_or(1).max(2);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Acceptance by block position", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..longest as f64, 0f64..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(longest.min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("block position")
        .y_desc("share of drafts accepted up to it")
        .draw()
        .map_err(err)?;
    let suites: Vec<&str> = {
        let mut v: Vec<&str> = lines.iter().map(|s| s.key.suite.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    for s in &lines {
        let c = legend.colour(s.key.mode);
        // Suites of one mode share its colour and differ by line width.
        let w = 1 + suites.iter().position(|&x| x == s.key.suite).unwrap_or(0) as u32;
        let points: Vec<(f64, f64)> = s.acceptance_by_position.iter().enumerate().map(|(i, &a)| ((i + 1) as f64, a)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(w)))
            .map_err(err)?
            .label(format!("{} / {}", s.key.suite, s.key.mode.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(w)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}

fn cdf(values: &mut [f64]) -> Vec<(f64, f64)> {
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    values.iter().enumerate().map(|(i, &v)| (v, (i + 1) as f64 / n)).collect()
}

/// Which values of a sample a panel plots.
type Values = fn(&Sample) -> Vec<f64>;

/// Two panels of cumulative distributions per mode: end-to-end latency and inter-token latency.
fn latency(path: &Path, samples: &[&Sample], setting: &str, legend: &Legend) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (SIZE.0 * 2, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let extract: [(&str, Values); 2] = [
        ("End-to-end latency", |s| vec![s.e2e_s * 1000.0]),
        ("Inter-token latency (gap between deliveries)", |s| s.itl_s.iter().map(|g| g * 1000.0).collect()),
    ];
    for (panel, (title, get)) in panels.iter().zip(extract) {
        let per_mode: Vec<(Contender, Vec<(f64, f64)>)> = legend
            .0
            .iter()
            .map(|&m| {
                let mut v: Vec<f64> = samples.iter().filter(|s| s.mode == m).flat_map(|s| get(s)).collect();
                (m, cdf(&mut v))
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect();
        let right = per_mode.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0f64, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{title} ({setting})"), ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..right, 0f64..1.0)
            .map_err(err)?;
        chart.configure_mesh().x_label_formatter(&|x| format!("{x:.0}")).x_desc("ms").y_desc("share at or below").draw().map_err(err)?;
        for (mode, pts) in per_mode {
            let c = legend.colour(mode);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err)?
                .label(mode.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// c(k) against k, with the line c = 1 + k (a block as dear as k + 1 separate steps).
fn cost_curve(path: &Path, cost: &[CostPoint]) -> anyhow::Result<()> {
    let kmax = cost.iter().map(|p| p.k).max().unwrap_or(1).max(1) as f64;
    let top = cost.iter().map(|p| p.c).filter(|c| c.is_finite()).fold(2.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Verifier cost curve c(k) = t(verify k drafts) / t(step)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..kmax, 0f64..top)
        .map_err(err)?;
    chart.configure_mesh().x_label_formatter(&|x| format!("{x:.0}")).x_desc("draft tokens k").y_desc("c(k)").draw().map_err(err)?;
    let pts: Vec<(f64, f64)> = cost.iter().filter(|p| p.c.is_finite()).map(|p| (p.k as f64, p.c)).collect();
    let blue = pick(1);
    chart
        .draw_series(LineSeries::new(pts.clone(), blue.stroke_width(2)))
        .map_err(err)?
        .label("measured")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], blue.stroke_width(2)));
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, blue.filled()))).map_err(err)?;
    let limit = (top - 1.0).min(kmax);
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(0.0, 1.0), (limit, 1.0 + limit)], BLACK.mix(0.5))))
        .map_err(err)?
        .label("k + 1 separate steps")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.mix(0.5)));
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}
