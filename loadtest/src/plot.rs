//! An SVG picture of a report, written by hand (no plotting crate): two
//! panels over time, throughput on top and latency (pubsub) or open
//! connections (conn) below, with the measured seconds shaded.

use std::fmt::Write as _;

use crate::report::Report;

const W: f64 = 900.0;
const PANEL_H: f64 = 230.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    unit: &str,
    t_max: f64,
    shade: Option<(f64, f64)>,
    series: &[Series<'_>],
) {
    let h = PANEL_H;
    let pw = W - LEFT - RIGHT;
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x = |t: f64| LEFT + pw * (t / t_max);
    let y = |v: f64| top + h - h * (v / y_max).min(1.0);
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"##,
        top - 10.0,
        escape(title)
    );
    if let Some((a, b)) = shade {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{h:.1}" fill="#eef5ee"/>"##,
            x(a),
            (x(b) - x(a)).max(0.0)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{pw:.1}" height="{h:.1}" fill="none" stroke="#888"/>"##
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            fmt_tick(v)
        );
    }
    let step = nice_max(t_max / 8.0).max(1.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            svg,
            r##"<text x="{xx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{t:.0}</text>"##,
            top + h + 15.0
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        r##"<text x="14" y="{:.1}" font-size="11" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
        top + h / 2.0,
        top + h / 2.0,
        escape(unit)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                svg,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"##,
                s.color,
                pts.join(" ")
            );
        }
        let lx = LEFT + pw - 160.0;
        let ly = top + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}" font-size="12">{}</text>"##,
            ly - 4.0,
            lx + 18.0,
            ly - 4.0,
            s.color,
            lx + 24.0,
            escape(s.name)
        );
    }
}

/// The SVG text for `r`.
pub fn svg(r: &Report) -> String {
    let t_max = r.series.iter().map(|p| f64::from(p.t)).fold(1.0, f64::max);
    let measured: Vec<f64> = r
        .series
        .iter()
        .filter(|p| p.phase == "measure")
        .map(|p| f64::from(p.t))
        .collect();
    let shade = match (measured.first(), measured.last()) {
        (Some(&a), Some(&b)) => Some((a - 1.0, b)),
        _ => None,
    };
    let total_h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"##
    );
    let label = r.label.as_deref().unwrap_or("");
    let pt = |f: &dyn Fn(&crate::report::SeriesPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .filter_map(|p| f(p).map(|v| (f64::from(p.t), v)))
            .collect()
    };
    if let Some(p) = &r.pubsub {
        let title = format!(
            "{label} {:?} QoS {} — messages/s (shaded: measured)",
            p.shape, p.qos
        );
        panel(
            &mut s,
            TOP,
            &title,
            "msgs/s",
            t_max,
            shade,
            &[
                Series {
                    name: "sent/s",
                    color: "#1f77b4",
                    points: pt(&|p| Some(p.counts.sent as f64)),
                },
                Series {
                    name: "received/s",
                    color: "#d62728",
                    points: pt(&|p| Some(p.counts.received as f64)),
                },
            ],
        );
        panel(
            &mut s,
            TOP + PANEL_H + GAP,
            "end-to-end latency per second",
            "ms",
            t_max,
            shade,
            &[
                Series {
                    name: "p99",
                    color: "#9467bd",
                    points: pt(&|p| p.p99_us.map(|v| v / 1000.0)),
                },
                Series {
                    name: "p50",
                    color: "#2ca02c",
                    points: pt(&|p| p.p50_us.map(|v| v / 1000.0)),
                },
            ],
        );
    } else {
        panel(
            &mut s,
            TOP,
            &format!("{label} connects/s"),
            "connects/s",
            t_max,
            None,
            &[Series {
                name: "connects/s",
                color: "#1f77b4",
                points: pt(&|p| Some(p.counts.connects as f64)),
            }],
        );
        let mut lower = vec![Series {
            name: "open connections",
            color: "#2ca02c",
            points: pt(&|p| Some(p.connected as f64)),
        }];
        if r.series.iter().any(|p| p.broker_rss_bytes.is_some()) {
            lower.push(Series {
                name: "broker RSS (KiB)",
                color: "#d62728",
                points: pt(&|p| p.broker_rss_bytes.map(|b| b as f64 / 1024.0)),
            });
        }
        panel(
            &mut s,
            TOP + PANEL_H + GAP,
            "open connections and broker memory",
            "count / KiB",
            t_max,
            None,
            &lower,
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">seconds</text></svg>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        total_h - 8.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(120_000.0), 200_000.0);
        assert_eq!(nice_max(1000.0), 1000.0);
        assert_eq!(fmt_tick(50_000.0), "50k");
        assert_eq!(escape("a<b&c"), "a&lt;b&amp;c");
    }
}
