//! SVG line charts of the results, written by hand (no plotting dependency): ns per packet
//! against list size for the in-kernel and end-to-end sections, apply time against list size for
//! the control plane. Points are medians; bars span the 25th to 75th percentile.

use std::fmt::Write as _;

use super::kernel::Family;
use super::report::Results;
use super::stats::Summary;

/// One point: a median with its quartiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// x value.
    pub x: f64,
    /// Median.
    pub y: f64,
    /// 25th percentile.
    pub lo: f64,
    /// 75th percentile.
    pub hi: f64,
}

impl Point {
    fn of(x: f64, s: &Summary) -> Point {
        Point {
            x,
            y: s.median,
            lo: s.p25,
            hi: s.p75,
        }
    }
}

/// A named line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, any order (drawn sorted by x).
    pub points: Vec<Point>,
    /// Points drawn as diamonds in the same colour, off the line (the real AzureCloud list
    /// among the synthetic sizes).
    pub extra: Vec<Point>,
    /// Draw dashed (baselines).
    pub dashed: bool,
}

/// A chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Legend text of the diamond markers ([`Series::extra`]).
    pub extra_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 58.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf", "#bcbd22",
];

/// An axis mapping values to pixels.
struct Axis {
    log: bool,
    min: f64,
    max: f64,
    from: f64,
    to: f64,
}

impl Axis {
    fn map(&self, v: f64) -> f64 {
        let (v, min, max) = if self.log {
            (v.max(1e-9).log10(), self.min.log10(), self.max.log10())
        } else {
            (v, self.min, self.max)
        };
        let t = if max > min {
            (v - min) / (max - min)
        } else {
            0.5
        };
        self.from + t * (self.to - self.from)
    }

    /// Tick values and labels.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let mut out = Vec::new();
            let mut v = self.min;
            while v <= self.max * 1.0001 {
                out.push((v, short(v)));
                v *= 10.0;
            }
            out
        } else {
            let step = nice_step((self.max - self.min) / 6.0);
            let mut out = Vec::new();
            let mut v = (self.min / step).ceil() * step;
            while v <= self.max + step * 1e-6 {
                out.push((v, short(v)));
                v += step;
            }
            out
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    let scaled = raw / power;
    let nice = if scaled <= 1.0 {
        1.0
    } else if scaled <= 2.0 {
        2.0
    } else if scaled <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// `1`, `250`, `10k`, `1M`, `0.5`.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1e6).fract() == 0.0 {
        format!("{}M", v / 1e6)
    } else if a >= 1e3 && (v / 1e3).fract() == 0.0 {
        format!("{}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// The decade at or below `v`.
fn decade_floor(v: f64) -> f64 {
    10f64.powf(v.max(1e-9).log10().floor())
}

/// The decade at or above `v`.
fn decade_ceil(v: f64) -> f64 {
    10f64.powf(v.max(1e-9).log10().ceil())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// Renders the chart; `None` when it has no points.
    pub fn svg(&self) -> Option<String> {
        let points: Vec<&Point> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().chain(&s.extra))
            .collect();
        if points.is_empty() {
            return None;
        }
        let xs = points.iter().map(|p| p.x);
        let x_min = decade_floor(xs.clone().fold(f64::INFINITY, f64::min));
        let x_max = decade_ceil(xs.fold(0.0, f64::max)).max(x_min * 10.0);
        let y_hi = points.iter().map(|p| p.hi.max(p.y)).fold(0.0, f64::max);
        let y_lo = points
            .iter()
            .map(|p| p.lo.min(p.y))
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let y = if self.log_y {
            let min = decade_floor(if y_lo.is_finite() { y_lo } else { 1.0 });
            Axis {
                log: true,
                min,
                max: decade_ceil(y_hi).max(min * 10.0),
                from: HEIGHT - BOTTOM,
                to: TOP,
            }
        } else {
            let step = nice_step(y_hi / 6.0);
            Axis {
                log: false,
                min: 0.0,
                max: ((y_hi * 1.05) / step).ceil() * step,
                from: HEIGHT - BOTTOM,
                to: TOP,
            }
        };
        let x = Axis {
            log: true,
            min: x_min,
            max: x_max,
            from: LEFT,
            to: WIDTH - RIGHT,
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(
            s,
            r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="24" font-size="15" font-weight="bold">{}</text>"##,
            LEFT,
            escape(&self.title)
        );
        // Grid and ticks.
        for (v, label) in x.ticks() {
            let px = x.map(v);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                HEIGHT - BOTTOM,
                HEIGHT - BOTTOM + 18.0
            );
        }
        for (v, label) in y.ticks() {
            let py = y.map(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                WIDTH - RIGHT,
                LEFT - 8.0,
                py + 4.0
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            WIDTH - RIGHT - LEFT,
            HEIGHT - BOTTOM - TOP
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT - 16.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r##"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
            (TOP + HEIGHT - BOTTOM) / 2.0,
            escape(&self.y_label)
        );
        // Series.
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts = series.points.clone();
            pts.sort_by(|a, b| a.x.total_cmp(&b.x));
            if pts.len() > 1 {
                let path: Vec<String> = pts
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x.map(p.x), y.map(p.y)))
                    .collect();
                let dash = if series.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"##,
                    path.join(" ")
                );
            }
            let diamonds = series.extra.iter().map(|p| (p, true));
            for (p, diamond) in pts.iter().map(|p| (p, false)).chain(diamonds) {
                let (px, py) = (x.map(p.x), y.map(p.y));
                if p.hi > p.lo {
                    let (t, b) = (y.map(p.hi), y.map(p.lo));
                    let _ = writeln!(
                        s,
                        r##"<path d="M{px:.1},{t:.1}V{b:.1}M{:.1},{t:.1}H{:.1}M{:.1},{b:.1}H{:.1}" stroke="{color}" fill="none"/>"##,
                        px - 3.0,
                        px + 3.0,
                        px - 3.0,
                        px + 3.0
                    );
                }
                if diamond {
                    let _ = writeln!(
                        s,
                        r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{color}" transform="rotate(45 {px:.1} {py:.1})"/>"##,
                        px - 4.0,
                        py - 4.0
                    );
                } else {
                    let _ = writeln!(
                        s,
                        r##"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"/>"##
                    );
                }
            }
            // Legend.
            let ly = TOP + 10.0 + i as f64 * 20.0;
            let lx = WIDTH - RIGHT + 16.0;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"##,
                lx + 22.0,
                lx + 28.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        if self.series.iter().any(|s| !s.extra.is_empty()) {
            let ly = TOP + 10.0 + self.series.len() as f64 * 20.0;
            let lx = WIDTH - RIGHT + 27.0;
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="#444" transform="rotate(45 {lx:.1} {ly:.1})"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                lx - 4.0,
                ly - 4.0,
                lx + 17.0,
                ly + 4.0,
                escape(&self.extra_label)
            );
        }
        s.push_str("</svg>\n");
        Some(s)
    }
}

/// A rendered chart: its title, file name and SVG text.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Title (alt text).
    pub title: String,
    /// File name inside the results directory.
    pub file: String,
    /// The SVG document.
    pub svg: String,
}

/// Every chart the results allow.
pub fn render_all(results: &Results) -> Vec<Rendered> {
    let mut charts = Vec::new();
    if let Some(k) = &results.kernel {
        for family in [Family::Ipv4, Family::Ipv6] {
            charts.push((
                format!("kernel-{}.svg", family.name().to_lowercase()),
                kernel_chart(k, family),
            ));
        }
    }
    if let Some(e) = &results.e2e {
        charts.push(("e2e.svg".into(), e2e_chart(e)));
    }
    if let Some(c) = &results.control {
        charts.push(("control-plane.svg".into(), control_chart(c)));
    }
    let mut rendered = Vec::new();
    for (file, mut chart) in charts {
        chart
            .series
            .retain(|s| !s.points.is_empty() || !s.extra.is_empty());
        let Some(svg) = chart.svg() else { continue };
        rendered.push(Rendered {
            title: chart.title,
            file,
            svg,
        });
    }
    rendered
}

fn kernel_chart(k: &super::kernel::KernelResults, family: Family) -> Chart {
    let sizes: Vec<f64> = k
        .rows
        .iter()
        .filter(|r| r.family == family && r.size.is_some())
        .filter_map(|r| r.prefixes.map(|p| p as f64))
        .collect();
    let mut series = Vec::new();
    for (program, name) in [("empty", "empty XDP program"), ("parse-only", "parse only")] {
        if let Some(s) = k
            .rows
            .iter()
            .find(|r| r.family == family && r.program == program)
            .and_then(|r| r.summary.as_ref())
        {
            series.push(Series {
                name: name.into(),
                points: sizes.iter().map(|&x| Point::of(x, s)).collect(),
                extra: Vec::new(),
                dashed: true,
            });
        }
    }
    for (pattern, name) in [
        ("hot", "apifence, one hot source"),
        ("inside", "apifence, sources inside"),
        ("miss", "apifence, random misses"),
    ] {
        let pick = |azure: bool| -> Vec<Point> {
            k.rows
                .iter()
                .filter(|r| r.family == family && r.program == "apifence" && r.pattern == pattern)
                .filter(|r| (r.size.as_deref() == Some("AzureCloud")) == azure)
                .filter_map(|r| Some(Point::of(r.prefixes? as f64, r.net.as_ref()?)))
                .collect()
        };
        series.push(Series {
            name: name.into(),
            points: pick(false),
            extra: pick(true),
            dashed: false,
        });
    }
    Chart {
        title: format!(
            "In-kernel cost per packet, {} (BPF_PROG_TEST_RUN, rotation subtracted)",
            family.name()
        ),
        x_label: "prefixes in the list".into(),
        y_label: "ns per packet (median)".into(),
        log_y: false,
        extra_label: "the AzureCloud list".into(),
        series,
    }
}

fn e2e_chart(e: &super::e2e::E2eResults) -> Chart {
    let mut series = Vec::new();
    for variant in super::e2e::VARIANTS {
        if variant == super::e2e::Variant::SenderOnly {
            continue;
        }
        let pick = |azure: bool| -> Vec<Point> {
            e.rows
                .iter()
                .filter(|r| r.variant == variant && (r.size == "AzureCloud") == azure)
                .filter_map(|r| {
                    let x = if r.entries > 0 {
                        r.entries
                    } else {
                        e.rows
                            .iter()
                            .find(|o| o.size == r.size && o.entries > 0)
                            .map_or(1, |o| o.entries)
                    };
                    Some(Point::of(x as f64, r.receiver.as_ref()?))
                })
                .collect()
        };
        series.push(Series {
            name: variant.name().into(),
            points: pick(false),
            extra: pick(true),
            dashed: matches!(
                variant,
                super::e2e::Variant::NoFilter | super::e2e::Variant::XdpDropAll
            ),
        });
    }
    Chart {
        title: "End to end on veth: receiver CPU per packet (SYN flood, all dropped)".into(),
        x_label: "entries in the list".into(),
        y_label: "receive-side ns per packet (median)".into(),
        log_y: false,
        extra_label: "the AzureCloud list".into(),
        series,
    }
}

fn control_chart(c: &super::control::ControlResults) -> Chart {
    let mut series = Vec::new();
    type Pick = fn(&super::control::ControlRow) -> Option<&Summary>;
    let picks: [(&str, Pick); 6] = [
        ("apifence ranges set", |r| r.apifence_set.summary.as_ref()),
        ("nft -f (flush + add)", |r| r.nft_replace.summary.as_ref()),
        ("ipset restore + swap", |r| r.ipset_replace.summary.as_ref()),
        ("apifence ranges add (one /32)", |r| {
            r.incremental.as_ref()?.apifence_add.summary.as_ref()
        }),
        ("nft add element (one)", |r| {
            r.incremental.as_ref()?.nft_add.summary.as_ref()
        }),
        ("ipset add (one)", |r| {
            r.incremental.as_ref()?.ipset_add.summary.as_ref()
        }),
    ];
    for (name, pick) in picks {
        let points = |azure: bool| -> Vec<Point> {
            c.rows
                .iter()
                .filter(|r| (r.size == "AzureCloud") == azure)
                .filter_map(|r| Some(Point::of((r.v4 + r.v6) as f64, pick(r)?)))
                .collect()
        };
        series.push(Series {
            name: name.into(),
            points: points(false),
            extra: points(true),
            dashed: name.contains("(one"),
        });
    }
    Chart {
        title: "Control plane: wall time of one change".into(),
        x_label: "prefixes in the list (IPv4 + IPv6)".into(),
        y_label: "ms (median)".into(),
        log_y: true,
        extra_label: "the AzureCloud list".into(),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(41.0), 50.0);
        assert_eq!(nice_step(600.0), 1000.0);
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(1.0), "1");
        assert_eq!(short(10_000.0), "10k");
        assert_eq!(short(1_000_000.0), "1M");
        assert_eq!(short(0.5), "0.5");
    }

    #[test]
    fn a_chart_renders_lines_bars_and_a_legend() {
        let chart = Chart {
            title: "t <1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_y: false,
            series: vec![Series {
                name: "a & b".into(),
                points: vec![
                    Point {
                        x: 1.0,
                        y: 10.0,
                        lo: 9.0,
                        hi: 11.0,
                    },
                    Point {
                        x: 1000.0,
                        y: 30.0,
                        lo: 30.0,
                        hi: 30.0,
                    },
                ],
                extra: vec![Point {
                    x: 10.0,
                    y: 20.0,
                    lo: 20.0,
                    hi: 20.0,
                }],
                dashed: false,
            }],
            extra_label: "real".into(),
        };
        let svg = chart.svg().unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(
            svg.matches("rotate(45").count(),
            2,
            "a diamond and its legend"
        );
        assert_eq!(svg.matches("<path").count(), 1, "one point has a spread");
    }

    #[test]
    fn an_empty_chart_renders_nothing() {
        let chart = Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_y: true,
            extra_label: String::new(),
            series: Vec::new(),
        };
        assert!(chart.svg().is_none());
    }
}
