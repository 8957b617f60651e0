//! Minimal inline SVG charts: line charts (linear or log y) and bar charts.
//! No scripts, no external resources.

use std::fmt::Write as _;

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// One named line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS color.
    pub color: &'static str,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Draw as steps (a gauge sampled over time) instead of straight segments.
    pub step: bool,
}

/// An axis: range, scale and tick labels.
#[derive(Clone, Debug)]
pub struct Axis {
    /// Axis title.
    pub label: String,
    /// Logarithmic (base 10) scale.
    pub log: bool,
    /// Explicit ticks (value, label); empty for automatic ticks.
    pub ticks: Vec<(f64, String)>,
    /// Values marked by a dashed line across the plot, with a label (an x
    /// axis only: where the load ended).
    pub marks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis with automatic ticks.
    pub fn linear(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            log: false,
            ticks: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// A log axis with automatic ticks.
    pub fn log(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            log: true,
            ticks: Vec::new(),
            marks: Vec::new(),
        }
    }
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn scale(v: f64, log: bool) -> f64 {
    if log { v.max(1e-9).log10() } else { v }
}

fn auto_ticks(lo: f64, hi: f64, log: bool) -> Vec<(f64, String)> {
    if log {
        let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
        return (a..=b)
            .map(|e| {
                let v = 10f64.powi(e);
                (e as f64, short(v))
            })
            .collect();
    }
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(mag * 10.0);
    let mut ticks = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-6 {
        ticks.push((v, short(v)));
        v += step;
    }
    ticks
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A line chart of `series`. Lines are drawn widest first, so a line that
/// runs on top of another leaves the other's edges showing; the legend is
/// as wide as its longest name.
pub fn line_chart(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(px, py) in pts() {
        let (sx, sy) = (scale(px, x.log), scale(py, y.log));
        x0 = x0.min(sx);
        x1 = x1.max(sx);
        y0 = y0.min(sy);
        y1 = y1.max(sy);
    }
    if x0 > x1 {
        return format!("<p class=\"empty\">{}: no data</p>", escape(title));
    }
    if !y.log {
        y0 = y0.min(0.0);
    }
    if (x1 - x0).abs() < 1e-9 {
        x1 = x0 + 1.0;
    }
    if (y1 - y0).abs() < 1e-9 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |v: f64| LEFT + (scale(v, x.log) - x0) / (x1 - x0) * pw;
    let py = |v: f64| TOP + ph - (scale(v, y.log) - y0) / (y1 - y0) * ph;
    let longest = series.iter().map(|s| s.name.chars().count()).max();
    let right = RIGHT.max(36.0 + 6.2 * longest.unwrap_or(0) as f64);
    let mut svg = header(title, W - RIGHT + right);
    axes(&mut svg, x, y, (x0, x1), (y0, y1), pw, ph);
    for (mark, label) in &x.marks {
        let cx = px(*mark);
        let _ = write!(
            svg,
            "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#555\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            TOP + ph,
            cx + 3.0,
            TOP + 10.0,
            escape(label)
        );
    }
    let widest = 1.6 + 0.8 * series.len().saturating_sub(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let mut d = String::new();
        let mut prev: Option<(f64, f64)> = None;
        for &(vx, vy) in &s.points {
            let (cx, cy) = (px(vx), py(vy));
            match prev {
                None => {
                    let _ = write!(d, "M{cx:.1},{cy:.1}");
                }
                Some((_, last_y)) if s.step => {
                    let _ = write!(d, " L{cx:.1},{last_y:.1} L{cx:.1},{cy:.1}");
                }
                Some(_) => {
                    let _ = write!(d, " L{cx:.1},{cy:.1}");
                }
            }
            prev = Some((cx, cy));
        }
        let _ = write!(
            svg,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{:.1}\" \
             stroke-opacity=\"0.85\"/>",
            s.color,
            widest - 0.8 * i as f64
        );
        legend(&mut svg, i, &s.name, s.color);
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart: one bar per (label, value, color).
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64, &'static str)]) -> String {
    if bars.is_empty() {
        return format!("<p class=\"empty\">{}: no data</p>", escape(title));
    }
    let y1 = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut svg = header(title, W);
    let x_axis = Axis::linear("");
    axes(
        &mut svg,
        &x_axis,
        &Axis::linear(y_label),
        (0.0, 1.0),
        (0.0, y1),
        pw,
        -ph,
    );
    let slot = pw / bars.len() as f64;
    for (i, (label, value, color)) in bars.iter().enumerate() {
        let h = value / y1 * ph;
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            TOP + ph - h,
            slot * 0.7,
            x + slot * 0.35,
            TOP + ph - h - 3.0,
            short(*value),
            x + slot * 0.35,
            TOP + ph + 14.0,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn header(title: &str, width: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{H}\" \
         viewBox=\"0 0 {width} {H}\" font-family=\"sans-serif\">\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        escape(title)
    )
}

/// Draws the frame, ticks and labels. A negative `ph` means "no x ticks"
/// (bar charts label their own bars).
fn axes(svg: &mut String, x: &Axis, y: &Axis, xr: (f64, f64), yr: (f64, f64), pw: f64, ph: f64) {
    let show_x = ph > 0.0;
    let ph = ph.abs();
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let y_ticks = if y.ticks.is_empty() {
        auto_ticks(yr.0, yr.1, y.log)
    } else {
        y.ticks
            .iter()
            .map(|(v, l)| (scale(*v, y.log), l.clone()))
            .collect()
    };
    for (v, label) in y_ticks {
        if v < yr.0 - 1e-9 || v > yr.1 + 1e-9 {
            continue;
        }
        let cy = TOP + ph - (v - yr.0) / (yr.1 - yr.0) * ph;
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{cy:.1}\" y2=\"{cy:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 4.0,
            cy + 3.0,
            escape(&label)
        );
    }
    if show_x {
        let x_ticks = if x.ticks.is_empty() {
            auto_ticks(xr.0, xr.1, x.log)
        } else {
            x.ticks
                .iter()
                .map(|(v, l)| (scale(*v, x.log), l.clone()))
                .collect()
        };
        for (v, label) in x_ticks {
            if v < xr.0 - 1e-9 || v > xr.1 + 1e-9 {
                continue;
            }
            let cx = LEFT + (v - xr.0) / (xr.1 - xr.0) * pw;
            let _ = write!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                TOP + ph + 13.0,
                escape(&label)
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" \
         transform=\"rotate(-90 14 {:.1})\">{}</text>",
        LEFT + pw / 2.0,
        TOP + ph + 30.0,
        escape(&x.label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(&y.label)
    );
}

fn legend(svg: &mut String, i: usize, name: &str, color: &str) {
    let y = TOP + 8.0 + 16.0 * i as f64;
    let x = LEFT + (W - LEFT - RIGHT) + 10.0;
    let _ = write!(
        svg,
        "<line x1=\"{x}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
        x + 18.0,
        x + 22.0,
        y + 4.0,
        escape(name)
    );
}
