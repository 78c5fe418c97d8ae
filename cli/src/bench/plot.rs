//! A small hand-written SVG line chart for `warren bench soak`: stacked panels sharing
//! one time axis, each with axes, ticks, a legend, shaded phases and dashed target
//! lines. No dependency; the output is plain SVG 1.1 any browser shows.

use std::fmt::Write as _;

/// One line of a panel; a NaN value breaks the line (no data in that interval).
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A shaded stretch of time (a phase), drawn in every panel.
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
    pub color: &'static str,
}

/// A horizontal dashed line at `value` (a target), labelled at its right end.
pub struct Target {
    pub value: f64,
    pub label: String,
    pub color: &'static str,
}

/// One panel.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub targets: Vec<Target>,
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 290.0;
const HEADER: f64 = 40.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 40.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 × a power of ten) for about `ticks` ticks over `range`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole SVG document: `title` on top, then one panel per entry of `panels`, all over
/// the time axis 0..=`x_max` seconds.
pub fn svg(title: &str, subtitle: &str, x_max: f64, bands: &[Band], panels: &[Panel]) -> String {
    let height = HEADER + PANEL_HEIGHT * panels.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="35" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    let x_max = if x_max.is_finite() && x_max > 0.0 {
        x_max
    } else {
        1.0
    };
    for (i, panel) in panels.iter().enumerate() {
        panel_svg(
            &mut s,
            HEADER + PANEL_HEIGHT * i as f64,
            x_max,
            bands,
            panel,
        );
    }
    s.push_str("</svg>\n");
    s
}

fn panel_svg(s: &mut String, top: f64, x_max: f64, bands: &[Band], panel: &Panel) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let (x0, y0) = (LEFT, top + TOP);
    let data_max = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|p| p.1))
        .chain(panel.targets.iter().map(|t| t.value))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // A panel without data (no sends in the whole run, say) still gets an axis of 0..1.
    let data_max = if data_max > 0.0 { data_max } else { 1.0 };
    let y_step = nice_step(data_max, 5.0);
    let y_max = (data_max / y_step).ceil() * y_step;
    let px = |x: f64| x0 + x / x_max * plot_w;
    let py = |y: f64| y0 + plot_h - y / y_max * plot_h;

    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 18.0,
        escape(&panel.title)
    );
    // Legend: one row under the title.
    let mut lx = x0;
    for series in &panel.series {
        let dash = if series.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 22.0,
            series.color,
            y = top + 34.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 27.0,
            top + 38.0,
            escape(&series.label)
        );
        lx += 40.0 + 7.0 * series.label.chars().count() as f64;
    }
    // Phases.
    for band in bands {
        let (a, b) = (px(band.from.max(0.0)), px(band.to.min(x_max)));
        if b <= a {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<rect x="{a:.1}" y="{y0}" width="{:.1}" height="{plot_h}" fill="{}" fill-opacity="0.35"/>"#,
            b - a,
            band.color
        );
        // A label only where it fits inside its band.
        if b - a >= 8.0 + 6.5 * band.label.chars().count() as f64 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" fill="#444" font-size="11">{}</text>"##,
                a + 3.0,
                y0 + 12.0,
                escape(&band.label)
            );
        }
    }
    // Grid, ticks and axis labels.
    for i in 0..=((y_max / y_step).round() as usize).min(100) {
        let y = i as f64 * y_step;
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e4e4e4"/>"##,
            x0 + plot_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            yy + 4.0,
            fmt_tick(y, y_step)
        );
    }
    let x_step = nice_step(x_max, 10.0);
    for i in 0..=((x_max / x_step + 0.01).floor() as usize).min(100) {
        let x = i as f64 * x_step;
        let xx = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#888"/>"##,
            y0 + plot_h,
            y0 + plot_h + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y0 + plot_h + 16.0,
            fmt_tick(x, x_step)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the node started (s)</text>"#,
        x0 + plot_w / 2.0,
        y0 + plot_h + 32.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        x0 - 48.0,
        y0 + plot_h / 2.0,
        escape(&panel.y_label)
    );
    // Targets, their labels pushed apart where they would overlap.
    let mut targets: Vec<&Target> = panel
        .targets
        .iter()
        .filter(|t| t.value.is_finite() && t.value <= y_max)
        .collect();
    // From the lowest up, each label at least a line above the one below it.
    targets.sort_by(|a, b| a.value.total_cmp(&b.value));
    let mut last_label_y = f64::INFINITY;
    for target in targets {
        let yy = py(target.value);
        let label_y = (yy + 4.0).min(y0 + plot_h).min(last_label_y - 12.0);
        last_label_y = label_y;
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{}" stroke-width="1" stroke-dasharray="3 3"/>"#,
            x0 + plot_w,
            target.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{label_y:.1}" fill="{}" font-size="11">{}</text>"#,
            x0 + plot_w + 4.0,
            target.color,
            escape(&target.label)
        );
    }
    // Lines, split where a value is missing.
    for series in &panel.series {
        let dash = if series.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &series.points {
            if x.is_finite() && y.is_finite() {
                if let Some(run) = runs.last_mut() {
                    run.push((px(x), py(y)));
                }
            } else if runs.last().is_some_and(|r| !r.is_empty()) {
                runs.push(Vec::new());
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            if run.len() == 1 {
                let (cx, cy) = run[0];
                let _ = writeln!(
                    s,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{}"/>"#,
                    series.color
                );
                continue;
            }
            let points: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"{dash}/>"#,
                points.join(" "),
                series.color
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(96.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert!((nice_step(0.3, 5.0) - 0.1).abs() < 1e-12);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn a_chart_has_lines_bands_and_escaped_labels() {
        let doc = svg(
            "soak <test>",
            "sub",
            10.0,
            &[Band {
                from: 2.0,
                to: 5.0,
                label: "load".into(),
                color: "#f4cccc",
            }],
            &[Panel {
                title: "memory".into(),
                y_label: "MiB".into(),
                series: vec![Series {
                    label: "RSS".into(),
                    color: "#1f77b4",
                    dashed: false,
                    points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)],
                }],
                targets: vec![Target {
                    value: 3.0,
                    label: "target".into(),
                    color: "#c00",
                }],
            }],
        );
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("soak &lt;test&gt;"));
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert_eq!(doc.matches("<circle").count(), 1);
        assert!(doc.contains("stroke-dasharray=\"3 3\""));
    }

    #[test]
    fn a_panel_without_data_still_has_an_axis() {
        let doc = svg(
            "empty",
            "",
            5.0,
            &[],
            &[Panel {
                title: "latency".into(),
                y_label: "ms".into(),
                series: vec![Series {
                    label: "p99".into(),
                    color: "#d62728",
                    dashed: false,
                    points: vec![(0.0, f64::NAN), (1.0, f64::NAN)],
                }],
                targets: Vec::new(),
            }],
        );
        assert_eq!(doc.matches("<polyline").count(), 0);
        assert!(doc.len() < 20_000, "{} bytes", doc.len());
    }
}
