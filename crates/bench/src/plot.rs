//! Grouped bar charts as standalone SVG, for the bench harness's results
//! (no plotting library or font files needed; any browser shows them).

use std::fmt::Write;

/// One series: a name for the legend and a value per group (`None`: no bar,
/// the measurement failed or was skipped).
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per group.
    pub values: Vec<Option<f64>>,
    /// Its color (CSS), the same in every chart of a report; `None`: the
    /// palette's, by position.
    pub color: Option<&'static str>,
}

/// A grouped bar chart.
pub struct Bars<'a> {
    /// Title above the chart.
    pub title: &'a str,
    /// Label of the value axis.
    pub unit: &'a str,
    /// Label under each group of bars.
    pub groups: Vec<String>,
    /// The bars of each group, one per series, in this order.
    pub series: Vec<Series>,
}

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis top (1, 2, 2.5 or 5 times a power of ten) at or above `max`.
fn nice_top(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let pow = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * pow >= max {
            return m * pow;
        }
    }
    10.0 * pow
}

/// Formats a value for a label: at most three significant digits.
fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Bars<'_> {
    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let (w, h) = (900.0, 480.0);
        let (left, right, top, bottom) = (80.0, 20.0, 50.0, 70.0 + 18.0 * self.series.len() as f64);
        let height = h + 18.0 * self.series.len() as f64;
        let plot_w = w - left - right;
        let plot_h = h - top - 70.0;
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b));
        let ymax = nice_top(max);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = write!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            w / 2.0,
            escape(self.title)
        );
        // Value axis: five gridlines, labelled with as many decimals as
        // their step needs.
        let step = ymax / 5.0;
        let decimals = if step >= 1.0 {
            0
        } else if step >= 0.1 {
            1
        } else {
            2
        };
        for i in 0..=5 {
            let v = ymax * f64::from(i) / 5.0;
            let y = top + plot_h - plot_h * f64::from(i) / 5.0;
            let _ = write!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.decimals$}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0,
            );
        }
        let _ = write!(
            s,
            r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            escape(self.unit)
        );
        let groups = self.groups.len().max(1) as f64;
        let group_w = plot_w / groups;
        let n = self.series.len().max(1) as f64;
        let bar_w = group_w * 0.8 / n;
        for (g, label) in self.groups.iter().enumerate() {
            let gx = left + group_w * g as f64;
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + group_w / 2.0,
                top + plot_h + 20.0,
                escape(label)
            );
            for (i, series) in self.series.iter().enumerate() {
                let x = gx + group_w * 0.1 + bar_w * i as f64;
                match series.values.get(g).copied().flatten() {
                    Some(v) => {
                        let bh = plot_h * (v / ymax).clamp(0.0, 1.0);
                        let _ = write!(
                            s,
                            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                            top + plot_h - bh,
                            bar_w * 0.92,
                            series.color.unwrap_or(COLORS[i % COLORS.len()]),
                            escape(&series.name),
                            short(v)
                        );
                        let _ = write!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                            x + bar_w * 0.46,
                            top + plot_h - bh - 3.0,
                            short(v)
                        );
                    }
                    None => {
                        let _ = write!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">n/a</text>"#,
                            x + bar_w * 0.46,
                            top + plot_h - 3.0
                        );
                    }
                }
            }
        }
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
            top + plot_h,
            left + plot_w,
            top + plot_h
        );
        // Legend under the chart.
        for (i, series) in self.series.iter().enumerate() {
            let y = height - bottom + 50.0 + 18.0 * i as f64;
            let _ = write!(
                s,
                r#"<rect x="{left}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                y - 10.0,
                series.color.unwrap_or(COLORS[i % COLORS.len()]),
                left + 18.0,
                y,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_and_cover_the_data() {
        for (max, top) in [
            (0.87, 1.0),
            (1.2, 2.0),
            (2.2, 2.5),
            (3.1, 5.0),
            (730.0, 1000.0),
            (0.0, 1.0),
        ] {
            assert_eq!(nice_top(max), top, "{max}");
        }
        assert_eq!(nice_top(f64::NAN), 1.0);
    }

    #[test]
    fn chart_has_a_bar_per_value_and_escapes_text() {
        let chart = Bars {
            title: "a < b",
            unit: "Mpps",
            groups: vec!["64 B".into(), "1518 B".into()],
            series: vec![
                Series {
                    name: "kernel & co".into(),
                    values: vec![Some(0.3), Some(0.2)],
                    color: None,
                },
                Series {
                    name: "Tollgate".into(),
                    values: vec![Some(0.9), None],
                    color: Some("#123456"),
                },
            ],
        }
        .svg();
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>\n"));
        assert_eq!(
            chart.matches("<rect x=").count(),
            3 + 2,
            "3 bars + 2 legend keys"
        );
        assert!(chart.contains("a &lt; b") && chart.contains("kernel &amp; co"));
        assert!(chart.contains("n/a"));
        assert_eq!(
            chart.matches("#123456").count(),
            2,
            "a bar and its legend key"
        );
        assert!(!chart.contains("NaN") && !chart.contains("inf"));
    }
}
