//! SVG charts drawn with plotters' SVG backend (no fonts needed: text is emitted as SVG
//! `<text>` and laid out by the browser). Every function returns one `<svg class="chart">`
//! element ready to inline in HTML.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::run::Run;
use super::table::ScoreTable;
use safeguard_core::Verdict;

/// Qualitative palette (Tableau 10): distinguishable, colour-blind tolerant.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4E, 0x79, 0xA7),
    RGBColor(0xF2, 0x8E, 0x2B),
    RGBColor(0x59, 0xA1, 0x4F),
    RGBColor(0xE1, 0x57, 0x59),
    RGBColor(0x76, 0xB7, 0xB2),
    RGBColor(0xB0, 0x7A, 0xA1),
    RGBColor(0xED, 0xC9, 0x48),
    RGBColor(0x9C, 0x75, 0x5F),
    RGBColor(0xFF, 0x9D, 0xA7),
    RGBColor(0xBA, 0xB0, 0xAC),
];

/// Colour of the `i`-th run, as used by every chart and the HTML legend.
pub fn run_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// `#rrggbb` of a colour.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

const SAFE_COLOR: RGBColor = RGBColor(0x4E, 0x79, 0xA7);
const UNSAFE_COLOR: RGBColor = RGBColor(0xE1, 0x57, 0x59);
const AXIS: RGBColor = RGBColor(0x55, 0x5B, 0x66);
const GRID: RGBColor = RGBColor(0xE3, 0xE6, 0xEB);
const TEXT: RGBColor = RGBColor(0x1F, 0x23, 0x28);
const FONT: &str = "sans-serif";

/// Sequential scale for scores in [0, 1]: pale to deep blue (as matplotlib's "Blues").
pub fn heat_color(score: f64) -> RGBColor {
    const STOPS: [(f64, (u8, u8, u8)); 5] = [
        (0.0, (0xF7, 0xFB, 0xFF)),
        (0.25, (0xC6, 0xDB, 0xEF)),
        (0.5, (0x6B, 0xAE, 0xD6)),
        (0.75, (0x21, 0x71, 0xB5)),
        (1.0, (0x08, 0x30, 0x6B)),
    ];
    let s = score.clamp(0.0, 1.0);
    let k = STOPS
        .windows(2)
        .position(|w| s <= w[1].0)
        .unwrap_or(STOPS.len() - 2);
    let ((s0, a), (s1, b)) = (STOPS[k], STOPS[k + 1]);
    let t = (s - s0) / (s1 - s0);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Text colour readable on a [`heat_color`] cell.
pub fn heat_text_color(score: f64) -> RGBColor {
    if score > 0.55 {
        WHITE
    } else {
        TEXT
    }
}

/// Shortens `text` to at most `max` characters, ending with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

type DrawResult<T = ()> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Turns plotters' SVG into an inline element: no namespace URL (HTML needs none and a report
/// must hold no `http` reference), a class for styling and an accessible label.
fn finish(svg: String, label: &str) -> String {
    let label = super::html::escape(label);
    svg.replacen(
        " xmlns=\"http://www.w3.org/2000/svg\"",
        &format!(" class=\"chart\" role=\"img\" aria-label=\"{label}\""),
        1,
    )
}

/// plotters writes `font-size` at 1/1.24 of the size it is given; sizes here are CSS pixels.
fn text_style(size: f64, color: RGBColor) -> TextStyle<'static> {
    (FONT, size * 1.24).into_font().color(&color)
}

/// Grouped bars: one group per policy, one bar per run, height = the policy's score (F1, or
/// accuracy for a policy without unsafe labels). Runs lacking a policy get no bar.
pub fn score_bars(table: &ScoreTable, names: &[String]) -> DrawResult<String> {
    let (width, height) = (960u32, 380u32);
    let legend_width = 230u32;
    let n = table.policies.len().max(1);
    let k = table.rows.len().max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(width - legend_width);
        let mut chart = ChartBuilder::on(&left)
            .margin_top(16)
            .margin_left(8)
            .margin_right(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..n as f64, 0f64..1.0)
            .map_err(err)?;
        let y_fmt = |y: &f64| format!("{:.0}", y * 100.0);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&y_fmt)
            .y_label_style(text_style(12.0, TEXT))
            .y_desc("score (%)")
            .axis_desc_style(text_style(13.0, AXIS))
            .draw()
            .map_err(err)?;
        let group = 0.8;
        let bar = group / k as f64;
        let plot_px = (width - legend_width - 72) as f64;
        let bar_px = plot_px / n as f64 * bar;
        for (r, row) in table.rows.iter().enumerate() {
            let color = run_color(r);
            let bars = row.scores.iter().enumerate().filter_map(|(p, s)| {
                let s = (*s)?;
                let x0 = p as f64 + (1.0 - group) / 2.0 + r as f64 * bar;
                Some(Rectangle::new(
                    [(x0 + bar * 0.06, 0.0), (x0 + bar * 0.94, s)],
                    color.filled(),
                ))
            });
            chart.draw_series(bars).map_err(err)?;
            if bar_px >= 26.0 {
                let labels = row.scores.iter().enumerate().filter_map(|(p, s)| {
                    let s = (*s)?;
                    let x = p as f64 + (1.0 - group) / 2.0 + (r as f64 + 0.5) * bar;
                    Some(Text::new(
                        format!("{:.1}", s * 100.0),
                        (x, s),
                        text_style(11.0, TEXT).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    ))
                });
                chart.draw_series(labels).map_err(err)?;
            }
        }
        for (i, policy) in table.policies.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                truncate(policy, 14),
                (x, y + 10),
                text_style(14.0, TEXT).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        draw_legend(&right, names, 28)?;
        root.present().map_err(err)?;
    }
    Ok(finish(svg, "score per policy and run"))
}

/// Colour swatches and names of the runs, top to bottom from `top` pixels.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    names: &[String],
    top: i32,
) -> DrawResult {
    for (i, name) in names.iter().enumerate() {
        let y = top + 24 * i as i32;
        area.draw(&Rectangle::new(
            [(6, y), (20, y + 14)],
            run_color(i).filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(
            truncate(name, 28),
            (28, y + 7),
            text_style(13.0, TEXT).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// A matrix of scores: one row per run, one column per evaluation policy, colour + number in
/// each cell (the paper's Table 3 layout when the runs are models trained under different
/// policies).
pub fn heatmap(table: &ScoreTable) -> DrawResult<String> {
    let n = table.policies.len().max(1);
    let k = table.rows.len().max(1);
    let cell_h = 42u32;
    let (width, height) = (960u32, 24 + cell_h * k as u32 + 40);
    let legend_width = 110u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(width - legend_width);
        let chart = ChartBuilder::on(&left)
            .margin_top(12)
            .margin_right(8)
            .x_label_area_size(36)
            .y_label_area_size(250)
            .build_cartesian_2d(0f64..n as f64, 0f64..k as f64)
            .map_err(err)?;
        for (i, policy) in table.policies.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                truncate(policy, 14),
                (x, y + 10),
                text_style(14.0, TEXT).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        // Row 0 at the top.
        for (r, row) in table.rows.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, (k - 1 - r) as f64 + 0.5));
            root.draw(&Text::new(
                truncate(&row.name, 34),
                (x - 10, y),
                text_style(13.0, TEXT).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
        }
        let mut chart = chart;
        for (r, row) in table.rows.iter().enumerate() {
            let y0 = (k - 1 - r) as f64;
            for (p, score) in row.scores.iter().enumerate() {
                let x0 = p as f64;
                let (fill, label, ink) = match score {
                    Some(s) => (
                        heat_color(*s),
                        format!("{:.1}", s * 100.0),
                        heat_text_color(*s),
                    ),
                    None => (RGBColor(0xEE, 0xEE, 0xEE), "–".to_string(), AXIS),
                };
                chart
                    .draw_series([Rectangle::new(
                        [(x0 + 0.01, y0 + 0.03), (x0 + 0.99, y0 + 0.97)],
                        fill.filled(),
                    )])
                    .map_err(err)?;
                chart
                    .draw_series([Text::new(
                        label,
                        (x0 + 0.5, y0 + 0.5),
                        text_style(15.0, ink).pos(Pos::new(HPos::Center, VPos::Center)),
                    )])
                    .map_err(err)?;
            }
        }
        // Colour bar.
        let bar_top = 14i32;
        let bar_bottom = (height - 40) as i32;
        let steps = 40;
        let span = (bar_bottom - bar_top) as f64;
        for i in 0..steps {
            let s = 1.0 - i as f64 / steps as f64;
            let y0 = bar_top + (span * i as f64 / steps as f64) as i32;
            let y1 = bar_top + (span * (i + 1) as f64 / steps as f64).ceil() as i32;
            right
                .draw(&Rectangle::new(
                    [(14, y0), (32, y1)],
                    heat_color(s).filled(),
                ))
                .map_err(err)?;
        }
        for (s, label) in [(1.0, "100"), (0.5, "50"), (0.0, "0")] {
            let y = bar_top + (span * (1.0 - s)) as i32;
            right
                .draw(&Text::new(
                    label,
                    (38, y),
                    text_style(12.0, TEXT).pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(finish(svg, "cross-policy score matrix"))
}

/// Bins of `p_unsafe` for the histogram and the reliability diagram.
pub const BINS: usize = 10;

/// Per-bin counts and calibration of scored rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    /// Rows labelled safe per bin.
    pub safe: [u64; BINS],
    /// Rows labelled unsafe per bin.
    pub unsafe_: [u64; BINS],
    /// Sum of `p_unsafe` per bin.
    pub p_sum: [f64; BINS],
}

impl Calibration {
    /// Bins `(p_unsafe, label)` pairs; `p = 1` falls in the last bin.
    pub fn of(scored: impl Iterator<Item = (f64, Verdict)>) -> Self {
        let mut c = Calibration::default();
        for (p, label) in scored {
            let b = ((p * BINS as f64) as usize).min(BINS - 1);
            match label {
                Verdict::Safe => c.safe[b] += 1,
                Verdict::Unsafe => c.unsafe_[b] += 1,
            }
            c.p_sum[b] += p;
        }
        c
    }

    /// Scored rows.
    pub fn n(&self) -> u64 {
        self.safe.iter().sum::<u64>() + self.unsafe_.iter().sum::<u64>()
    }

    /// `(mean p_unsafe, unsafe fraction, rows)` of each non-empty bin.
    pub fn points(&self) -> Vec<(f64, f64, u64)> {
        (0..BINS)
            .filter_map(|b| {
                let count = self.safe[b] + self.unsafe_[b];
                (count > 0).then(|| {
                    (
                        self.p_sum[b] / count as f64,
                        self.unsafe_[b] as f64 / count as f64,
                        count,
                    )
                })
            })
            .collect()
    }

    /// Expected calibration error: the row-weighted mean gap between the mean score and the
    /// unsafe fraction of each bin.
    pub fn ece(&self) -> f64 {
        let n = self.n();
        if n == 0 {
            return 0.0;
        }
        self.points()
            .iter()
            .map(|(p, f, count)| (p - f).abs() * *count as f64 / n as f64)
            .sum()
    }
}

/// Two panels for one run: the histogram of `p_unsafe` per true label (with the decision
/// threshold) and the reliability diagram (unsafe fraction against mean score per bin).
pub fn score_panels(run: &Run, color: RGBColor) -> DrawResult<String> {
    let cal = Calibration::of(run.scored_rows());
    let (width, height) = (960u32, 320u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(width / 2);
        histogram(&left, &cal, run.meta.threshold)?;
        reliability(&right, &cal, color)?;
        root.present().map_err(err)?;
    }
    Ok(finish(
        svg,
        &format!("score distribution of {}", run.name()),
    ))
}

fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    cal: &Calibration,
    threshold: Option<f64>,
) -> DrawResult {
    let max = cal
        .safe
        .iter()
        .chain(cal.unsafe_.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("p_unsafe by true label", text_style(15.0, TEXT))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..1.0, 0f64..max * 1.5)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(0)
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .x_labels(6)
        .y_labels(5)
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .x_label_formatter(&|x: &f64| format!("{x:.1}"))
        .x_label_style(text_style(12.0, TEXT))
        .y_label_style(text_style(12.0, TEXT))
        .x_desc("p_unsafe")
        .y_desc("items")
        .axis_desc_style(text_style(12.0, AXIS))
        .draw()
        .map_err(err)?;
    let w = 1.0 / BINS as f64;
    for (label, counts, offset, color) in [
        ("safe", &cal.safe, 0.0, SAFE_COLOR),
        ("unsafe", &cal.unsafe_, 0.5, UNSAFE_COLOR),
    ] {
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(b, c)| {
                        let x0 = b as f64 * w + w * (0.05 + offset * 0.9);
                        Rectangle::new([(x0, 0.0), (x0 + w * 0.45, *c as f64)], color.filled())
                    }),
            )
            .map_err(err)?
            .label(format!("label {label}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    if let Some(t) = threshold.filter(|t| (0.0..=1.0).contains(t)) {
        chart
            .draw_series([PathElement::new(
                vec![(t, 0.0), (t, max * 1.5)],
                AXIS.stroke_width(1),
            )])
            .map_err(err)?
            .label(format!("threshold {t}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], AXIS.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.9))
        .border_style(GRID)
        .label_font(text_style(12.0, TEXT))
        .draw()
        .map_err(err)
}

fn reliability<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    cal: &Calibration,
    color: RGBColor,
) -> DrawResult {
    let caption = format!("reliability (ECE {:.3})", cal.ece());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text_style(15.0, TEXT))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..1.0, 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .max_light_lines(0)
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x: &f64| format!("{x:.1}"))
        .y_label_formatter(&|y: &f64| format!("{y:.1}"))
        .x_label_style(text_style(12.0, TEXT))
        .y_label_style(text_style(12.0, TEXT))
        .x_desc("mean p_unsafe in bin")
        .y_desc("unsafe fraction")
        .axis_desc_style(text_style(12.0, AXIS))
        .draw()
        .map_err(err)?;
    chart
        .draw_series([PathElement::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            RGBColor(0xAA, 0xAA, 0xAA).stroke_width(1),
        )])
        .map_err(err)?;
    let points = cal.points();
    let max_count = points.iter().map(|p| p.2).max().unwrap_or(1) as f64;
    chart
        .draw_series([PathElement::new(
            points.iter().map(|(p, f, _)| (*p, *f)).collect::<Vec<_>>(),
            color.stroke_width(2),
        )])
        .map_err(err)?;
    chart
        .draw_series(points.iter().map(|(p, f, count)| {
            let radius = 3.0 + 5.0 * (*count as f64 / max_count).sqrt();
            Circle::new((*p, *f), radius as i32, color.filled())
        }))
        .map_err(err)?;
    Ok(())
}
