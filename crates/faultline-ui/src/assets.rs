//! The one script the pages share (`/ui.js`): collapse and expand spans, span details,
//! find in trace. Embedded in the binary; no build step.

use axum::http::header;
use axum::response::IntoResponse;

const SCRIPT: &str = r#"// faultline UI: collapse and expand spans, span details, find in trace.
document.addEventListener('DOMContentLoaded', () => {
  const wf = document.getElementById('waterfall');
  if (!wf) return;
  const rows = Array.from(wf.querySelectorAll('tr.span-row'));
  const byParent = new Map();
  rows.forEach(r => {
    const p = r.dataset.parent;
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(r);
  });
  const setHidden = (span, hidden) => {
    (byParent.get(span) || []).forEach(c => {
      c.classList.toggle('hidden', hidden);
      const d = wf.querySelector('tr[data-detail-of="' + c.dataset.span + '"]');
      if (d && hidden) d.classList.add('hidden');
      if (hidden || !c.classList.contains('collapsed')) setHidden(c.dataset.span, hidden);
    });
  };
  rows.forEach(r => {
    const t = r.querySelector('.toggle');
    if (t && t.textContent) {
      t.addEventListener('click', ev => {
        ev.stopPropagation();
        const collapse = !r.classList.contains('collapsed');
        r.classList.toggle('collapsed', collapse);
        t.textContent = collapse ? '▸' : '▾';
        setHidden(r.dataset.span, collapse);
      });
    }
    r.addEventListener('click', () => {
      const d = wf.querySelector('tr[data-detail-of="' + r.dataset.span + '"]');
      if (d) d.classList.toggle('hidden');
    });
  });
  const f = document.getElementById('trace-filter');
  if (f) f.addEventListener('input', () => {
    const q = f.value.trim().toLowerCase();
    rows.forEach(r => {
      r.style.opacity = (!q || r.dataset.text.includes(q)) ? '1' : '0.25';
      r.classList.toggle('match', !!q && r.dataset.text.includes(q));
    });
  });
});
"#;

/// `/ui.js`.
pub(crate) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}
