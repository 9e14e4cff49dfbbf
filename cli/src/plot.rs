//! Loss curves as PNG or SVG (plotters): per optimizer, the mean over seeds
//! as a line and the band from the lowest to the highest seed, on a log
//! scale. Non-finite losses (a run that diverged) leave a gap; a run that
//! stopped early contributes to the steps it reached.
//!
//! Text is drawn with DejaVu Sans, compiled into the binary (`fonts/`, its
//! licence beside it), so plots look the same on machines without fonts.

use crate::Failure;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

const SIZE: (u32, u32) = (960, 600);

fn register_font() -> Result<(), Failure> {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("fonts/DejaVuSans.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Failure::usage("the plot font could not be loaded"))
    }
}

/// One step's losses over seeds.
#[derive(Clone, Copy)]
struct Spread {
    mean: f64,
    lo: f64,
    hi: f64,
}

/// Per step: mean, min and max over the runs that reached it, finite values only.
fn band(runs: &[Vec<f64>]) -> Vec<Option<Spread>> {
    let len = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(i).copied())
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            if vals.is_empty() {
                return None;
            }
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some(Spread { mean, lo, hi })
        })
        .collect()
}

/// Maximal runs of consecutive steps that have a value.
fn segments(points: &[Option<Spread>]) -> Vec<Vec<(usize, Spread)>> {
    let mut out: Vec<Vec<(usize, Spread)>> = Vec::new();
    let mut current = Vec::new();
    for (i, p) in points.iter().enumerate() {
        match p {
            Some(v) => current.push((i, *v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[(String, Vec<Vec<f64>>)],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let bands: Vec<_> = curves.iter().map(|(_, runs)| band(runs)).collect();
    let values = bands.iter().flatten().flatten();
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), s| {
        (a.min(s.lo), b.max(s.hi))
    });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else if lo.is_finite() {
        (lo / 10.0, lo * 10.0)
    } else {
        (1e-3, 1.0)
    };
    let steps = bands.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..steps - 1, (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .y_labels(12)
        .label_style(("sans-serif", 14))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (c, ((name, _), points)) in curves.iter().zip(&bands).enumerate() {
        let color = COLORS[c % COLORS.len()];
        let mut labelled = false;
        for seg in segments(points) {
            let mut outline: Vec<(usize, f64)> = seg.iter().map(|(i, v)| (*i, v.hi)).collect();
            outline.extend(seg.iter().rev().map(|(i, v)| (*i, v.lo)));
            chart
                .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.15))))
                .map_err(e)?;
            let line = chart
                .draw_series(LineSeries::new(
                    seg.iter().map(|(i, v)| (*i, v.mean)),
                    color.stroke_width(2),
                ))
                .map_err(e)?;
            if !labelled {
                line.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
                labelled = true;
            }
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes a plot to `path` (atomically): `png` draws it on a bitmap for a
/// `.png` path, `svg` on an SVG string otherwise (plotters' backends are
/// distinct types, so a chart is drawn by one function per backend).
fn write_plot(
    path: &Path,
    png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
    svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), Failure> {
    register_font()?;
    if path.extension().is_some_and(|x| x == "png") {
        // The PNG backend writes to a path (on `present`), named with `.png`.
        crate::atomic::write_with_path(path, |tmp| {
            png(BitMapBackend::new(tmp, SIZE).into_drawing_area())
        })
    } else {
        let mut text = String::new();
        svg(SVGBackend::with_string(&mut text, SIZE).into_drawing_area())
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
        crate::atomic::write_bytes(path, text.as_bytes())
    }
}

/// Writes the loss curves to `path` (atomically): PNG for `.png`, SVG otherwise.
pub fn loss_curves(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<Vec<f64>>)],
) -> Result<(), Failure> {
    write_plot(
        path,
        |area| draw(area, title, curves),
        |area| draw(area, title, curves),
    )
}

/// One optimizer's tuning: (hyperparameter value, validation loss) pairs.
pub type Sweep = (String, Vec<(f64, f64)>);

fn draw_sweeps<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    sweeps: &[Sweep],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let finite = |v: &f64| v.is_finite() && *v > 0.0;
    let xs: Vec<f64> = sweeps
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .filter(finite)
        .collect();
    let ys: Vec<f64> = sweeps
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(finite)
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo < hi {
            (lo / 1.2, hi * 1.2)
        } else if lo.is_finite() {
            (lo / 10.0, lo * 10.0)
        } else {
            (1e-3, 1.0)
        }
    };
    let ((x0, x1), (y0, y1)) = (range(&xs), range(&ys));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("final validation loss")
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|v| format!("{v:.0e}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (c, (name, points)) in sweeps.iter().enumerate() {
        let color = COLORS[c % COLORS.len()];
        let kept: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| finite(x) && finite(y))
            .collect();
        chart
            .draw_series(LineSeries::new(kept.iter().copied(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(kept.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Writes the final validation loss against a hyperparameter's value, one
/// line per optimizer, log-log (atomically): PNG for `.png`, SVG otherwise.
/// A diverged value (non-finite loss) leaves no point.
pub fn sweeps(path: &Path, title: &str, x_desc: &str, sweeps: &[Sweep]) -> Result<(), Failure> {
    write_plot(
        path,
        |area| draw_sweeps(area, title, x_desc, sweeps),
        |area| draw_sweeps(area, title, x_desc, sweeps),
    )
}
