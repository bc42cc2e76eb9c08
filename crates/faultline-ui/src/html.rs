//! HTML building blocks: escaping, the page layout with its partial-data banner, small
//! SVG charts, and formatting of durations and rates. Pages are plain strings: every value
//! from spans goes through [`esc`].

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A duration in nanoseconds as `850 µs`, `12.3 ms`, `1.24 s`.
pub fn dur(ns: u64) -> String {
    faultline_model::health::human_duration(ns)
}

/// Milliseconds as [`dur`] does, or `-`.
pub fn ms(v: Option<f64>) -> String {
    v.map(|m| dur((m * 1e6) as u64))
        .unwrap_or_else(|| "-".into())
}

/// A share as a percentage.
pub fn pct(v: f64) -> String {
    if v > 0.0 && v < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", v * 100.0)
    }
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1f24;background:#fafafa}
header{background:#20232a;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{color:#fff}
main{padding:12px 16px}table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:4px 8px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
th a{color:inherit}td.num{text-align:right;font-variant-numeric:tabular-nums}
.partial{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin-bottom:10px}
.err{color:#b3261e}.warn{color:#8a5a00}.muted{color:#777}.bar{background:#7aa7e0;height:10px;display:inline-block}
.errbar{background:#d9534f}section{margin:14px 0}h2{font-size:16px;margin:6px 0}
details{background:#fff;border:1px solid #ddd;margin:4px 0;padding:4px 8px}
summary{cursor:pointer}.wf td{padding:2px 6px;border:none}.wf tr:hover{background:#eef4ff}
.wf .lane{position:relative;width:55%;min-width:300px}
.wf .span{position:absolute;height:12px;top:4px;background:#7aa7e0;min-width:2px}
.wf .ruler td{border-bottom:1px solid #ccc;height:16px}.wf .ruler .tick{position:absolute;top:2px;font-size:10px;color:#666;border-left:1px solid #bbb;padding-left:2px;white-space:nowrap}
.wf .ruler .tick.end{transform:translateX(-100%);border-left:none;border-right:1px solid #bbb;padding:0 2px 0 0}
#compare tr.only-a td,#compare tr.only-b td{background:#fff3cd}#compare tr.more td,#compare tr.fewer td{background:#fde8e8}#compare tr.slower td{background:#fdf0e2}#compare tr.faster td{background:#e8f4ea}.charts{display:flex;flex-wrap:wrap;gap:8px 24px}figure.chart{margin:0}figure.chart figcaption{font-size:13px;margin-left:58px}.wf .skewed .span{outline:2px dashed #6f42c1}.skewmark{color:#6f42c1;font-size:.85em}.skew{color:#6f42c1}.wf .critical .span{background:#e08a1e}.wf .errspan .span{background:#d9534f}.wf .critical.errspan .span{background:repeating-linear-gradient(135deg,#d9534f 0 6px,#e08a1e 6px 12px)}.wf .critical td:first-child{box-shadow:inset 3px 0 0 #e08a1e}
.toggle{cursor:pointer;display:inline-block;width:1em}.orphan{color:#b3261e;font-size:12px}
.detail{background:#f4f6fa;font-size:12px}.detail td{border-bottom:1px solid #e6e6e6}
form.q input,form.q select{margin-right:6px}.hidden{display:none}
.state-degraded b,b.state-degraded{color:#a86400}.state-failed b,b.state-failed{color:#b3261e}
"#;

/// A page for the public (`/public/status`): the same style, refreshing every 60 s, with
/// no navigation into faultline and no script.
pub fn public_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title><meta http-equiv=refresh content=\"60\"><style>{CSS}</style></head><body><main>{body}</main></body></html>",
        esc(title)
    )
}

/// A whole page: header with navigation, the partial banner when `partial` has reasons,
/// then `body`. `refresh` reloads the page every so many seconds.
pub fn page(title: &str, partial: &[String], refresh: Option<u64>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    out.push_str("<!doctype html><html lang=en><head><meta charset=utf-8>");
    let _ = write!(out, "<title>{} · faultline</title>", esc(title));
    if let Some(r) = refresh.filter(|r| *r > 0) {
        let _ = write!(out, "<meta http-equiv=refresh content=\"{r}\">");
    }
    let _ = write!(
        out,
        "<style>{CSS}</style><script src=\"/ui.js\" defer></script></head><body>"
    );
    out.push_str(
        "<header><b>faultline</b><a href=\"/\">Services</a><a href=\"/search\">Search</a>\
         <a href=\"/dependencies\">Dependencies</a><a href=\"/tracing-health\">Tracing health</a><a href=\"/probes\">Probes</a><a href=\"/alerts\">Alerts</a><a href=\"/experiments\">Experiments</a><a href=\"/consistency\">Checks</a><a href=\"/status\">Status</a><a href=\"/audit\">Audit</a></header><main>",
    );
    if !partial.is_empty() {
        out.push_str("<div class=partial id=partial><b>Partial data.</b> ");
        for r in partial {
            let _ = write!(out, "{}. ", esc(r));
        }
        out.push_str("</div>");
    }
    let _ = write!(out, "<h1 style=\"font-size:20px\">{}</h1>", esc(title));
    out.push_str(body);
    out.push_str("</main></body></html>");
    out
}

/// An error page in the UI's layout (see `faultline_api::error`): what went wrong, and
/// where to go from here.
pub fn error_page(code: u16, title: &str, message: &str, partial: &[String]) -> String {
    let hint = match code {
        400 => "Check the address: a parameter above is not valid.",
        404 => "It may not exist, or may have passed the retention time.",
        409 => "It conflicts with what exists; the message says what to do instead.",
        503 => "faultline is busy or starting; try again in a moment.",
        _ => "This is faultline's fault; the log says more.",
    };
    page(
        &format!("{code} {title}"),
        partial,
        None,
        &format!(
            "<p class=err id=error>{}</p><p class=muted>{hint} <a href=\"/\">Services</a> · <a href=\"/search\">Search</a> · <a href=\"/status\">Status</a></p>",
            esc(message)
        ),
    )
}
