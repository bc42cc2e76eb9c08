//! Charts people can read, drawn on the server as SVG: a time axis with tick labels (UTC
//! clock times, or dates over a day), a value axis from zero with "nice" ticks (1, 2 or 5
//! times a power of ten) labelled in the chart's unit, and every point carrying its time
//! and value as a hover title. No script and no build step.
//!
//! Each chart's SVG has `data-x-min`/`data-x-max` (Unix seconds of the first and last
//! point) and `data-y-max` (the top tick), and each point its value as `data-v`, so tests
//! check the axes against the data; tick labels are `<text class=tick-x>` and
//! `<text class=tick-y>`.

use std::fmt::Write as _;

use crate::html::esc;

/// What a chart's values are, for their labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Per second (`12.5/s`).
    PerSecond,
    /// A percentage of 0 to 100 (`2.5%`).
    Percent,
    /// Milliseconds (`850 µs`, `12.3 ms`, `1.24 s`).
    Millis,
    /// A count (`0`, `250`, `1.5k`).
    Count,
}

impl Unit {
    /// A value as its label.
    pub fn label(self, v: f64) -> String {
        match self {
            Self::PerSecond => format!("{}/s", number(v)),
            Self::Percent => format!("{}%", number(v)),
            Self::Millis if v <= 0.0 => "0".into(),
            Self::Millis => faultline_model::health::human_duration((v * 1e6) as u64),
            Self::Count => number(v),
        }
    }
}

/// A number with as few digits as it needs (`0`, `0.05`, `2.5`, `120`, `1.5k`).
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The smallest "nice" number (1, 2 or 5 times a power of ten) at least `v`.
pub fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// Value ticks from 0 to a nice top at or above `max`: (top, ticks).
pub fn value_ticks(max: f64) -> (f64, Vec<f64>) {
    let top = nice_ceiling(max);
    // Steps that are nice too: a top of 2 in four (0.5), of 1 or 5 in five (0.2, 1).
    let parts = if (top / 10f64.powf(top.log10().floor()) - 2.0).abs() < 1e-9 {
        4
    } else {
        5
    };
    (
        top,
        (0..=parts).map(|i| top * i as f64 / parts as f64).collect(),
    )
}

/// Time ticks for `[t0, t1]` (Unix seconds): the smallest round step giving at most 6.
pub fn time_ticks(t0: u64, t1: u64) -> Vec<u64> {
    let span = t1.saturating_sub(t0).max(1);
    let step = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
        172_800,
    ]
    .into_iter()
    .find(|s| span / s <= 6)
    .unwrap_or(86400 * 7);
    let first = t0.div_ceil(step) * step;
    (0..)
        .map(|i| first + i * step)
        .take_while(|t| *t <= t1)
        .collect()
}

/// A time as a tick label: `HH:MM` (UTC), or `MM-DD HH:MM` when the chart spans a day
/// or more.
fn time_label(t: u64, long: bool) -> String {
    let secs_of_day = t % 86400;
    let (h, m) = (secs_of_day / 3600, secs_of_day / 60 % 60);
    if !long {
        return format!("{h:02}:{m:02}");
    }
    date_label(t, h, m)
}

/// `HH:MM:SS` (UTC), for ticks less than a minute apart.
fn seconds_label(t: u64) -> String {
    let s = t % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn date_label(t: u64, h: u64, m: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = (t / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{mo:02}-{d:02} {h:02}:{m:02}")
}

/// Time tick labels: to the second when ticks are less than a minute apart, else `HH:MM`
/// (with the date when `long`).
fn tick_labels(ticks: &[u64], long: bool) -> Vec<String> {
    let fine = ticks.windows(2).any(|p| p[1] - p[0] < 60);
    ticks
        .iter()
        .map(|&t| {
            if fine {
                seconds_label(t)
            } else {
                time_label(t, long)
            }
        })
        .collect()
}

/// How a tick label at `x` is anchored so that it stays within `[lo, hi]`.
fn anchor(x: f64, lo: f64, hi: f64) -> &'static str {
    if x > hi - 24.0 {
        "end"
    } else if x < lo + 24.0 {
        "start"
    } else {
        "middle"
    }
}

/// Room for the value labels on the left and the time labels below.
const LEFT: f64 = 58.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 10.0;

/// The value axis of a chart `w` wide: a grid line and a label in `unit` at each tick,
/// `y` placing a value.
fn value_axis(out: &mut String, w: f64, ticks: &[f64], y: impl Fn(f64) -> f64, unit: Unit) {
    for v in ticks {
        let yy = y(*v);
        let _ = write!(
            out,
            "<line x1={LEFT} x2={} y1={yy:.1} y2={yy:.1} stroke=\"#e3e3e3\"></line><text class=tick-y x={} y={:.1} text-anchor=end font-size=10 fill=\"#666\">{}</text>",
            w - RIGHT,
            LEFT - 4.0,
            yy + 3.5,
            esc(&unit.label(*v))
        );
    }
}

/// A chart's size: full (a page's chart) or small (a table cell: value ticks at 0 and
/// the top only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 420 x 150 pixels.
    Full,
    /// 260 x 72 pixels.
    Small,
}

/// A line chart over time: `points` of (Unix seconds, value; `None` is a gap), with axes,
/// ticks, unit labels and a hover title on every point. `id` names the chart for tests
/// and links.
pub fn time_chart(id: &str, title: &str, points: &[(u64, Option<f64>)], unit: Unit) -> String {
    chart_of(id, title, points, unit, Size::Full)
}

/// [`time_chart`] at [`Size::Small`], for a table cell; the title is the hover text.
pub fn small_time_chart(
    id: &str,
    title: &str,
    points: &[(u64, Option<f64>)],
    unit: Unit,
) -> String {
    chart_of(id, title, points, unit, Size::Small)
}

fn chart_of(
    id: &str,
    title: &str,
    points: &[(u64, Option<f64>)],
    unit: Unit,
    size: Size,
) -> String {
    let (w, h) = match size {
        Size::Full => (420.0, 150.0),
        Size::Small => (260.0, 72.0),
    };
    let (x0, x1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.0, b.0.max(a.0 + 1)),
        _ => (0, 1),
    };
    let max = points.iter().filter_map(|p| p.1).fold(0.0f64, f64::max);
    let (top, mut yticks) = value_ticks(max);
    if size == Size::Small {
        yticks = vec![0.0, top];
    }
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let x = |t: u64| LEFT + (t.saturating_sub(x0)) as f64 / (x1 - x0) as f64 * pw;
    let y = |v: f64| TOP + ph - v / top * ph;
    let caption = match size {
        Size::Full => format!("<figcaption>{}</figcaption>", esc(title)),
        Size::Small => String::new(),
    };
    let mut out = format!(
        "<figure class=\"chart {}\" id=\"{}\">{caption}<svg width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"{}\" data-x-min={x0} data-x-max={x1} data-y-max={top}>",
        if size == Size::Small { "small" } else { "full" },
        esc(id),
        esc(title)
    );
    // Value axis: grid lines and labels.
    value_axis(&mut out, w, &yticks, y, unit);
    // Time axis: the base line, ticks and labels.
    let long = x1 - x0 >= 86400;
    let _ = write!(
        out,
        "<line x1={LEFT} x2={} y1={:.1} y2={:.1} stroke=\"#999\"></line>",
        w - RIGHT,
        TOP + ph,
        TOP + ph
    );
    let mut xticks = time_ticks(x0, x1);
    if size == Size::Small && xticks.len() > 3 {
        // Every other tick: the labels need the room.
        xticks = xticks.into_iter().step_by(2).collect();
    }
    let labels = tick_labels(&xticks, long);
    for (t, label) in xticks.into_iter().zip(labels) {
        let xx = x(t);
        let anchor = anchor(xx, LEFT, w - RIGHT);
        let _ = write!(
            out,
            "<line x1={xx:.1} x2={xx:.1} y1={:.1} y2={:.1} stroke=\"#999\"></line><text class=tick-x x={xx:.1} y={:.1} text-anchor={anchor} font-size=10 fill=\"#666\" data-t={t}>{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            h - 6.0,
            label
        );
    }
    // The line, with gaps, and a point with its hover title for every value.
    let mut path = String::new();
    let mut pen_up = true;
    for (t, v) in points {
        match v {
            Some(v) => {
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if pen_up { "M" } else { "L" },
                    x(*t),
                    y(*v)
                );
                pen_up = false;
            }
            None => pen_up = true,
        }
    }
    let _ = write!(
        out,
        "<path d=\"{path}\" fill=none stroke=\"#2f6fb5\" stroke-width=1.5></path>"
    );
    for (t, v) in points {
        if let Some(v) = v {
            let _ = write!(
                out,
                "<circle class=pt data-v={v} cx={:.1} cy={:.1} r=2.5 fill=\"#2f6fb5\"><title>{} UTC: {}</title></circle>",
                x(*t),
                y(*v),
                time_label(*t, true),
                esc(&unit.label(*v))
            );
        }
    }
    out.push_str("</svg></figure>");
    out
}

/// A latency histogram: `counts[i]` are the values in bucket `i`, whose upper bound is
/// `bounds_ms[i]` (ascending; the last count is above the last bound), drawn from the first
/// to the last non-empty bucket as bars of equal width (the bounds grow geometrically), with
/// the bucket edges as duration ticks below, a count axis from 0 on the left, and each bar's
/// range, count and share as its hover title. `noun` names one of what is counted
/// (`request`).
/// The SVG's `data-x-min`/`data-x-max` are the edges in milliseconds (`inf` for an open
/// last bucket) and `data-y-max` the top tick; bars are `<rect class=bar data-count=N>`.
pub fn histogram(id: &str, title: &str, bounds_ms: &[f64], counts: &[u64], noun: &str) -> String {
    let (w, h) = (720.0, 170.0);
    let total: u64 = counts.iter().sum();
    let (Some(first), Some(last)) = (
        counts.iter().position(|&c| c > 0),
        counts.iter().rposition(|&c| c > 0),
    ) else {
        return String::new();
    };
    let lower = |i: usize| if i == 0 { 0.0 } else { bounds_ms[i - 1] };
    let upper = |i: usize| bounds_ms.get(i).copied();
    let edge = |ms: f64| Unit::Millis.label(ms);
    let max = counts[first..=last].iter().copied().max().unwrap_or(1);
    // Counts are whole: up to 5, a tick per count; beyond, nice steps.
    let (top, yticks) = if max <= 5 {
        (max as f64, (0..=max).map(|v| v as f64).collect())
    } else {
        value_ticks(max as f64)
    };
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let n = last - first + 1;
    let bw = pw / n as f64;
    let y = |v: f64| TOP + ph - v / top * ph;
    let mut out = format!(
        "<figure class=histogram id=\"{}\"><figcaption>{}</figcaption><svg width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"{}\" data-x-min={} data-x-max={} data-y-max={top}>",
        esc(id),
        esc(title),
        esc(title),
        lower(first),
        upper(last).map_or_else(|| "inf".to_string(), |u| u.to_string()),
    );
    value_axis(&mut out, w, &yticks, y, Unit::Count);
    let _ = write!(
        out,
        "<line x1={LEFT} x2={} y1={:.1} y2={:.1} stroke=\"#999\"></line>",
        w - RIGHT,
        TOP + ph,
        TOP + ph
    );
    // Edge labels: at most about eight, the first and every k-th after it.
    let every = (n + 1).div_ceil(8).max(1);
    for k in (0..=n).step_by(every) {
        let i = first + k;
        let xx = LEFT + k as f64 * bw;
        let label = match (k == n, upper(i.saturating_sub(1))) {
            (true, None) => continue,
            _ => edge(lower(i)),
        };
        let anchor = if k == 0 {
            "start"
        } else if k == n {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            out,
            "<line x1={xx:.1} x2={xx:.1} y1={:.1} y2={:.1} stroke=\"#999\"></line><text class=tick-x x={xx:.1} y={:.1} text-anchor={anchor} font-size=10 fill=\"#666\" data-ms={}>{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            h - 6.0,
            lower(i),
            esc(&label)
        );
    }
    for (k, &c) in counts[first..=last].iter().enumerate() {
        let i = first + k;
        let range = match upper(i) {
            Some(u) if i == 0 => format!("≤ {}", edge(u)),
            Some(u) => format!("{} – {}", edge(lower(i)), edge(u)),
            None => format!("> {}", edge(lower(i))),
        };
        let share = if total == 0 {
            0.0
        } else {
            c as f64 * 100.0 / total as f64
        };
        let _ = write!(
            out,
            "<rect class=bar data-count={c} x={:.1} y={:.1} width={:.1} height={:.1} fill=\"#2f6fb5\"><title>{}: {} ({share:.1}%)</title></rect>",
            LEFT + k as f64 * bw + 1.0,
            y(c as f64),
            (bw - 2.0).max(1.0),
            TOP + ph - y(c as f64),
            esc(&range),
            esc(&faultline_model::health::plural(c, noun))
        );
    }
    out.push_str("</svg></figure>");
    out
}

/// One lane of a [`timeline`]: its label and its runs of (state, from, to in Unix
/// seconds).
pub type Lane<'a> = (&'a str, Vec<(&'a str, u64, u64)>);

/// States over time, a lane per part: a time axis over `[from_s, to_s]` with tick labels,
/// each lane's label on the left, and each run a bar coloured by its state (`ok`,
/// `degraded`, `failed`) with its state and times as hover title. The SVG has
/// `data-x-min`/`data-x-max`; runs are `<rect class="run state-STATE">`.
pub fn timeline(id: &str, title: &str, (from_s, to_s): (u64, u64), lanes: &[Lane<'_>]) -> String {
    let to_s = to_s.max(from_s + 1);
    let lane_h = 18.0;
    let (w, left) = (720.0, 110.0);
    let h = TOP + lanes.len() as f64 * lane_h + BOTTOM;
    let pw = w - left - RIGHT;
    let x = |t: u64| left + (t.clamp(from_s, to_s) - from_s) as f64 / (to_s - from_s) as f64 * pw;
    let mut out = format!(
        "<figure class=timeline id=\"{}\"><figcaption>{}</figcaption><svg width={w} height={h} viewBox=\"0 0 {w} {h}\" role=img aria-label=\"{}\" data-x-min={from_s} data-x-max={to_s}>",
        esc(id),
        esc(title),
        esc(title)
    );
    let long = to_s - from_s >= 86400;
    let base = h - BOTTOM;
    let _ = write!(
        out,
        "<line x1={left} x2={} y1={base:.1} y2={base:.1} stroke=\"#999\"></line>",
        w - RIGHT
    );
    let ticks = time_ticks(from_s, to_s);
    let labels = tick_labels(&ticks, long);
    for (t, label) in ticks.into_iter().zip(labels) {
        let xx = x(t);
        let anchor = anchor(xx, left, w - RIGHT);
        let _ = write!(
            out,
            "<line x1={xx:.1} x2={xx:.1} y1={TOP} y2={:.1} stroke=\"#eee\"></line><text class=tick-x x={xx:.1} y={:.1} text-anchor={anchor} font-size=10 fill=\"#666\" data-t={t}>{label}</text>",
            base + 4.0,
            h - 6.0,
        );
    }
    for (i, (name, runs)) in lanes.iter().enumerate() {
        let y = TOP + i as f64 * lane_h;
        let _ = write!(
            out,
            "<text class=lane x={} y={:.1} text-anchor=end font-size=11 fill=\"#333\">{}</text>",
            left - 6.0,
            y + lane_h * 0.7,
            esc(name)
        );
        for (state, a, b) in runs {
            let fill = match *state {
                "ok" => "#3a9a5b",
                "degraded" => "#e0a030",
                _ => "#c8332b",
            };
            let _ = write!(
                out,
                "<rect class=\"run state-{}\" x={:.1} y={:.1} width={:.1} height={:.1} fill=\"{fill}\"><title>{}: {} from {} to {} UTC</title></rect>",
                esc(state),
                x(*a),
                y + 2.0,
                (x(*b) - x(*a)).max(2.0),
                lane_h - 4.0,
                esc(name),
                esc(state),
                seconds_label(*a),
                seconds_label(*b)
            );
        }
    }
    out.push_str("</svg></figure>");
    out
}

/// One point of a [`scatter`]: when (Unix ns), how long (ns), where it links, whether it
/// failed, and its hover text.
pub struct Dot {
    /// Start, Unix nanoseconds.
    pub t_ns: u64,
    /// Duration, nanoseconds.
    pub dur_ns: u64,
    /// The link it opens.
    pub href: String,
    /// Drawn red.
    pub error: bool,
    /// Hover text (escaped here).
    pub title: String,
}

/// Duration over start time with axes (time below, duration from 0 on the left), each
/// point a link with its hover text.
pub fn scatter(id: &str, dots: &[Dot]) -> String {
    let (w, h) = (720.0, 180.0);
    let t0 = dots.iter().map(|d| d.t_ns).min().unwrap_or(0);
    let t1 = dots.iter().map(|d| d.t_ns).max().unwrap_or(0).max(t0 + 1);
    let max_ms = dots.iter().map(|d| d.dur_ns).max().unwrap_or(0) as f64 / 1e6;
    let (top, yticks) = value_ticks(max_ms);
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let x = |t: u64| LEFT + 6.0 + (t - t0) as f64 / (t1 - t0) as f64 * (pw - 12.0);
    let y = |ms: f64| TOP + ph - ms / top * ph;
    let mut out = format!(
        "<svg id=\"{}\" class=scatter width={w} height={h} viewBox=\"0 0 {w} {h}\" style=\"background:#fff;border:1px solid #ddd\" data-x-min={} data-x-max={} data-y-max={top}>",
        esc(id),
        t0 / 1_000_000_000,
        t1.div_ceil(1_000_000_000)
    );
    value_axis(&mut out, w, &yticks, y, Unit::Millis);
    let (s0, s1) = (t0 / 1_000_000_000, t1.div_ceil(1_000_000_000));
    let ticks = time_ticks(s0, s1);
    let labels = tick_labels(&ticks, s1 - s0 >= 86400);
    for (t, label) in ticks.into_iter().zip(labels) {
        let xx = x((t * 1_000_000_000).clamp(t0, t1));
        let anchor = anchor(xx, LEFT, w - RIGHT);
        let _ = write!(
            out,
            "<text class=tick-x x={xx:.1} y={:.1} text-anchor={anchor} font-size=10 fill=\"#666\" data-t={t}>{label}</text>",
            h - 6.0
        );
    }
    let _ = write!(
        out,
        "<line x1={LEFT} x2={} y1={:.1} y2={:.1} stroke=\"#999\"></line>",
        w - RIGHT,
        TOP + ph,
        TOP + ph
    );
    for d in dots {
        let _ = write!(
            out,
            "<a href=\"{}\"><circle class=point cx={:.1} cy={:.1} r=5 fill=\"{}\"><title>{}</title></circle></a>",
            esc(&d.href),
            x(d.t_ns),
            y(d.dur_ns as f64 / 1e6),
            if d.error { "#d9534f" } else { "#2f6fb5" },
            esc(&d.title)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_has_a_lane_per_part_and_a_bar_per_run() {
        let lanes: Vec<Lane<'_>> = vec![
            (
                "wal",
                vec![
                    ("ok", 1000, 1600),
                    ("degraded", 1600, 2000),
                    ("ok", 2000, 4600),
                ],
            ),
            ("disk", vec![("ok", 1000, 4600)]),
        ];
        let svg = timeline("t", "Health", (1000, 4600), &lanes);
        assert_eq!(svg.matches("<rect class=\"run ").count(), 4);
        assert_eq!(svg.matches("class=\"run state-degraded\"").count(), 1);
        assert!(
            svg.contains("<title>wal: degraded from 00:26:40 to 00:33:20 UTC</title>"),
            "{svg}"
        );
        assert_eq!(svg.matches("<text class=lane").count(), 2);
        let ticks: Vec<u64> = svg
            .split("data-t=")
            .skip(1)
            .map(|t| t.split('>').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            ticks.len() >= 3 && ticks.iter().all(|t| (1000..=4600).contains(t)),
            "{ticks:?}"
        );
    }

    #[test]
    fn a_histogram_draws_the_non_empty_range_with_edges_counts_and_hover_text() {
        let bounds = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0];
        // Nothing up to 1 ms, 30 in 2-5 ms, 7 in 5-10, none in 10-20, 3 in 20-50, 1 above.
        let counts = [0, 0, 30, 7, 0, 3, 1];
        let svg = histogram("h", "Requests by duration", &bounds, &counts, "request");
        assert_eq!(
            svg.matches("<rect class=bar").count(),
            5,
            "2 ms to beyond 50 ms"
        );
        assert!(
            svg.contains("data-x-min=2 data-x-max=inf data-y-max=50"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>2.0 ms – 5.0 ms: 30 requests (73.2%)</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>&gt; 50.0 ms: 1 request (2.4%)</title>"),
            "{svg}"
        );
        let edges: Vec<&str> = svg
            .split("class=tick-x")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(
            edges,
            vec!["2.0 ms", "5.0 ms", "10.0 ms", "20.0 ms", "50.0 ms"]
        );
        let values: Vec<&str> = svg
            .split("class=tick-y")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(values, vec!["0", "10", "20", "30", "40", "50"]);
        assert_eq!(histogram("h", "t", &bounds, &[0; 7], "request"), "");
        let small = histogram("h", "t", &bounds, &[0, 2, 1, 0, 0, 0, 0], "request");
        assert!(small.contains("data-y-max=2"), "{small}");
        assert_eq!(
            small.matches("class=tick-y").count(),
            3,
            "0, 1 and 2: whole counts"
        );
    }

    #[test]
    fn value_ticks_start_at_zero_and_reach_a_nice_top_above_the_data() {
        for (max, top) in [
            (0.0, 1.0),
            (0.7, 1.0),
            (1.0, 1.0),
            (1.3, 2.0),
            (3.1, 5.0),
            (7.0, 10.0),
            (180.0, 200.0),
            (0.042, 0.05),
        ] {
            let (t, ticks) = value_ticks(max);
            assert!((t - top).abs() < 1e-12, "{max}: {t}");
            assert_eq!(ticks[0], 0.0);
            assert!((ticks[ticks.len() - 1] - top).abs() < 1e-12);
            assert!((4..=5).contains(&(ticks.len() - 1)), "{max}: {ticks:?}");
        }
    }

    #[test]
    fn time_ticks_are_round_and_within_the_range() {
        let t0 = 1_800_000_123;
        for (span, step) in [
            (900, 300),
            (3600, 600),
            (6 * 3600, 3600),
            (7 * 86400, 2 * 86400),
        ] {
            let ticks = time_ticks(t0, t0 + span);
            assert!(!ticks.is_empty(), "{span}");
            assert!(
                ticks
                    .iter()
                    .all(|t| *t >= t0 && *t <= t0 + span && t % step == 0),
                "{span}: {ticks:?}"
            );
            assert!(ticks.len() <= 7, "{span}: {ticks:?}");
        }
        assert_eq!(time_label(1_800_000_000, false), "08:00");
        assert_eq!(time_label(1_800_000_000, true), "01-15 08:00");
    }

    #[test]
    fn a_scatter_has_axes_from_zero_and_a_link_per_point() {
        let dots: Vec<Dot> = (0..10u64)
            .map(|i| Dot {
                t_ns: 1_800_000_000_000_000_000 + i * 3_000_000_000,
                dur_ns: (i + 1) * 40_000_000,
                href: format!("/trace/{i:032x}"),
                error: i == 3,
                title: format!("trace {i}"),
            })
            .collect();
        let svg = scatter("scatter", &dots);
        // 40-400 ms: a top of 500 ms; 27 s of starts: ticks 5 s apart, with seconds.
        assert!(svg.contains("data-y-max=500"), "{svg}");
        assert!(
            svg.contains(">0</text>") && svg.contains(">500.0 ms</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">08:00:05</text>") && svg.contains(">08:00:25</text>"),
            "{svg}"
        );
        assert_eq!(svg.matches("<a href=\"/trace/").count(), 10);
        assert_eq!(
            svg.matches("#d9534f").count(),
            1,
            "one failing trace in red"
        );
    }

    #[test]
    fn a_chart_has_its_axes_labels_and_hover_values() {
        let pts: Vec<(u64, Option<f64>)> = (0..60)
            .map(|i| (1_800_000_000 + i * 60, (i != 30).then_some(i as f64 * 3.0)))
            .collect();
        let svg = time_chart("p99", "p99 latency", &pts, Unit::Millis);
        assert!(svg.contains("data-x-min=1800000000 data-x-max=1800003540 data-y-max=200"));
        assert!(
            svg.contains(">0</text>") && svg.contains(">200.0 ms</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">08:10</text>") && svg.contains(">08:50</text>"),
            "{svg}"
        );
        assert_eq!(svg.matches("<circle").count(), 59, "a gap has no point");
        assert!(
            svg.contains("<title>01-15 08:01 UTC: 3.0 ms</title>"),
            "{svg}"
        );
        assert_eq!(Unit::PerSecond.label(0.05), "0.05/s");
        assert_eq!(Unit::Percent.label(2.5), "2.5%");
    }
}
