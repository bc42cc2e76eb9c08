#!/usr/bin/env python3
"""Drive faultline's web UI in headless Chromium and check what a user sees.

Used by faultline's integration tests (crates/faultline/tests/ui_browser.rs):

    ui_check.py --base http://127.0.0.1:16686 --service checkout-svc \
        --screenshots DIR

It needs Debian's chromium and chromium-driver (/usr/bin/chromium and
/usr/bin/chromedriver, or --chromium and --chromedriver). Steps, each checked:

1. Services page: the service is listed; sorting by p99 keeps it; each
   service's two small charts have axes reaching its largest point.
2. Search: the service's traces are listed with a scatter plot with axes;
   checking two results and pressing Compare shows their structural
   difference; the first result opens the trace page.
3. Trace view: a time ruler from 0 inside the lanes, bars with their offset
   and duration on hover; three spans are shown; the failing span on the
   critical path carries both marks (stripes and the edge bar); collapsing the
   root hides its two children, expanding shows them again; clicking a span
   shows its details; finding "db.query" in the trace marks that span.
4. Service page: its three charts over time have a time axis and a value
   axis with tick labels drawn inside the chart, value ticks from 0 up to at
   least the largest point, time ticks within the points' range; the request
   histogram's bars sum to the requests, with duration edges and counts on
   axes drawn inside it; "look here first" has p50, p90, p99 and slowest
   exemplars and an error group for the recorded ValueError; opening the
   group shows its example trace link.
5. Dependencies page: the map is drawn.
6. Status page: every part is listed with its state, and has a lane in the
   health timeline over the hour. Tracing health renders; an unknown page,
   trace and service each answer a 404 page that says what is missing and
   links back.
7. Clock skew (with --skew-trace): moved spans are marked.
8. Probes (with --probe): the probe is listed as up; its page has the checks
   timeline and the duration chart with readable axes, and each check links to
   its trace.

A screenshot of every page goes to --screenshots. On success it prints one
JSON line with what it saw and exits 0; on a failed check it prints the
reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def check_chart(svg, seen: dict, min_value_ticks: int) -> None:
    """A chart over time: time and value tick labels drawn inside it, time ticks within
    the points' range, the value axis from 0 to at least the largest point, and every
    point with its hover value."""
    name = svg.get_attribute("aria-label")
    box = svg.rect
    xs = svg.find_elements(By.CSS_SELECTOR, "text.tick-x")
    ys = svg.find_elements(By.CSS_SELECTOR, "text.tick-y")
    check(len(xs) >= 1 and len(ys) >= min_value_ticks, f"{name}: {len(xs)} time and {len(ys)} value ticks")
    for t in xs + ys:
        r = t.rect
        check(r["width"] > 0 and box["x"] - 1 <= r["x"] and r["x"] + r["width"] <= box["x"] + box["width"] + 1,
              f"{name}: tick label {t.text!r} drawn inside the chart")
    x0, x1 = int(svg.get_attribute("data-x-min")), int(svg.get_attribute("data-x-max"))
    check(all(x0 <= int(t.get_attribute("data-t")) <= x1 for t in xs), f"{name}: time ticks within the data")
    top = float(svg.get_attribute("data-y-max"))
    points = svg.find_elements(By.CSS_SELECTOR, "circle.pt")
    values = [float(c.get_attribute("data-v")) for c in points]
    check(len(values) >= 1 and all(c.find_element(By.TAG_NAME, "title").get_attribute("textContent") for c in points),
          f"{name}: points with hover values")
    check(top >= max(values), f"{name}: the value axis reaches the largest point ({top} < {max(values)})")
    check(ys[0].text.startswith("0"), f"{name}: the value axis starts at 0: {ys[0].text}")
    seen.setdefault("charts", {})[name] = {"ticks_x": [t.text for t in xs], "ticks_y": [t.text for t in ys],
                                           "top": top, "points": len(values)}


def visible_rows(driver) -> list:
    return [r for r in driver.find_elements(By.CSS_SELECTOR, "tr.span-row") if r.is_displayed()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--screenshots", required=True)
    ap.add_argument("--skew-trace", help="a trace with planted clock skew: its moved spans are marked")
    ap.add_argument("--probe", help="a probe that passes: its pages are checked")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)

    opts = Options()
    opts.binary_location = args.chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
    driver.set_page_load_timeout(30)
    seen: dict = {}
    try:
        def shot(name: str) -> None:
            driver.save_screenshot(os.path.join(args.screenshots, f"{name}.png"))

        base = args.base.rstrip("/")
        svc = args.service

        # 1. Services.
        driver.get(f"{base}/?range=1h&sort=p99")
        shot("1-services")
        names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#services tr.service-row td:first-child a")]
        check(svc in names, f"services page lists {svc}: {names}")
        seen["services"] = names
        small = driver.find_elements(By.CSS_SELECTOR, "#services figure.chart.small svg")
        check(len(small) == 2 * len(names), f"two charts per service: {len(small)} for {len(names)}")
        for svg in small:
            check_chart(svg, seen, min_value_ticks=2)

        # 2. Search, then follow the first result.
        driver.get(f"{base}/search?service={svc}&lookback=1h&limit=20")
        shot("2-search")
        results = driver.find_elements(By.CSS_SELECTOR, "#results tr.result a.trace-link")
        check(len(results) >= 1, "search lists the service's traces")
        check(len(driver.find_elements(By.CSS_SELECTOR, "#scatter circle.point")) == len(results),
              "one scatter point per result")
        sc = driver.find_element(By.ID, "scatter")
        box = sc.rect
        sxs = sc.find_elements(By.CSS_SELECTOR, "text.tick-x")
        sys_ = sc.find_elements(By.CSS_SELECTOR, "text.tick-y")
        check(len(sxs) >= 1 and len(sys_) >= 3, f"scatter axes: {len(sxs)} time and {len(sys_)} duration ticks")
        for t in sxs + sys_:
            r = t.rect
            check(r["width"] > 0 and box["x"] - 1 <= r["x"] and r["x"] + r["width"] <= box["x"] + box["width"] + 1,
                  f"scatter tick label {t.text!r} drawn inside the plot")
        check(sys_[0].text == "0", f"durations from 0: {sys_[0].text}")
        seen["scatter_ticks"] = [t.text for t in sxs + sys_]
        seen["search_results"] = len(results)
        # Pick two results and compare them.
        if len(results) >= 2:
            boxes = driver.find_elements(By.CSS_SELECTOR, "#results input[type=checkbox][name=t]")
            boxes[0].click()
            boxes[1].click()
            driver.find_element(By.CSS_SELECTOR, "#compare-form button").click()
            for _ in range(50):
                if "/compare?" in driver.current_url:
                    break
                time.sleep(0.1)
            url = driver.current_url
            check("/compare?" in url, f"compare opens: {url}")
            shot("2b-compare")
            rows = driver.find_elements(By.CSS_SELECTOR, "#compare tr.path")
            check(len(rows) >= 1, "the comparison lists paths")
            check(len(driver.find_elements(By.CSS_SELECTOR, "#compare-traces a.trace-link")) == 2,
                  "both traces are linked")
            seen["compare_paths"] = len(rows)
            driver.get(f"{base}/search?service={svc}&lookback=1h&limit=20")
            results = driver.find_elements(By.CSS_SELECTOR, "#results tr.result a.trace-link")
        results[0].click()
        check("/trace/" in driver.current_url, f"the result opens a trace: {driver.current_url}")

        # 3. Trace view: a time ruler, collapse, expand, details, find.
        shot("3-trace")
        rows = visible_rows(driver)
        check(len(rows) == 3, f"three spans shown, saw {len(rows)}")
        lane = driver.find_element(By.CSS_SELECTOR, "#ruler td.lane").rect
        ticks = driver.find_elements(By.CSS_SELECTOR, "#ruler .tick")
        check(len(ticks) >= 2 and ticks[0].text == "0", f"the ruler starts at 0: {[t.text for t in ticks]}")
        for t in ticks:
            r = t.rect
            check(lane["x"] - 1 <= r["x"] and r["x"] + r["width"] <= lane["x"] + lane["width"] + 1,
                  f"ruler tick {t.text!r} inside the lane")
        bar = rows[0].find_element(By.CSS_SELECTOR, ".span")
        check(bar.get_attribute("title").startswith("starts at +"), f"a bar's hover: {bar.get_attribute('title')}")
        seen["ruler"] = [t.text for t in ticks]
        # The failing payment.charge ends last: on the critical path, marked as both.
        both = driver.find_elements(By.CSS_SELECTOR, "#waterfall tr.span-row.critical.errspan")
        check(len(both) == 1 and "payment.charge" in both[0].text, f"the failing span on the critical path: {[b.text for b in both]}")
        stripes = both[0].find_element(By.CSS_SELECTOR, ".span").value_of_css_property("background-image")
        edge = both[0].find_element(By.CSS_SELECTOR, "td").value_of_css_property("box-shadow")
        check("repeating-linear-gradient" in stripes and edge != "none",
              f"error red does not hide the critical mark: {stripes!r} {edge!r}")
        root = rows[0]
        toggle = root.find_element(By.CSS_SELECTOR, ".toggle")
        toggle.click()
        check(len(visible_rows(driver)) == 1, "collapsing the root hides its children")
        shot("3b-trace-collapsed")
        toggle.click()
        check(len(visible_rows(driver)) == 3, "expanding the root shows them again")
        db = next(r for r in visible_rows(driver) if "db.query" in r.text)
        db.click()
        detail = driver.find_element(By.CSS_SELECTOR, f"tr[data-detail-of='{db.get_attribute('data-span')}']")
        check(detail.is_displayed() and "db.system" in detail.text, "clicking a span shows its attributes")
        f = driver.find_element(By.ID, "trace-filter")
        f.send_keys("db.query")
        marked = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "tr.span-row.match")]
        check(len(marked) == 1 and "db.query" in marked[0], f"find in trace marks db.query: {marked}")
        shot("3c-trace-details")
        raw = driver.find_element(By.LINK_TEXT, "raw OTLP JSON").get_attribute("href")
        check("/api/v3/traces/" in raw, "the raw OTLP JSON link")
        seen["trace"] = driver.current_url.rsplit("/", 1)[-1]

        # 4. Service page: look here first.
        driver.get(f"{base}/service/{svc}?range=1h")
        shot("4-service")
        charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart svg")
        check(len(charts) == 3, f"three charts over time: {len(charts)}")
        for svg in charts:
            check_chart(svg, seen, min_value_ticks=3)
        hist = driver.find_element(By.CSS_SELECTOR, "figure#histogram svg")
        box = hist.rect
        bars = hist.find_elements(By.CSS_SELECTOR, "rect.bar")
        counts = [int(b.get_attribute("data-count")) for b in bars]
        total = int(re.search(r"All (\d+) requests", driver.page_source).group(1))
        check(len(bars) >= 1 and sum(counts) == total, f"histogram bars {counts} sum to the {total} requests")
        check(float(hist.get_attribute("data-y-max")) >= max(counts), "the count axis reaches the tallest bar")
        edges = hist.find_elements(By.CSS_SELECTOR, "text.tick-x")
        ms = [float(e.get_attribute("data-ms")) for e in edges]
        check(len(edges) >= 2 and ms == sorted(ms) and ms[0] == float(hist.get_attribute("data-x-min")),
              f"duration edges ascending from the first bucket: {[e.text for e in edges]}")
        for t in edges + hist.find_elements(By.CSS_SELECTOR, "text.tick-y"):
            r = t.rect
            check(box["x"] - 1 <= r["x"] and r["x"] + r["width"] <= box["x"] + box["width"] + 1,
                  f"histogram: tick label {t.text!r} drawn inside the chart")
        check(all(b.find_element(By.TAG_NAME, "title").get_attribute("textContent").count("(") == 1 for b in bars),
              "every bar has its range, count and share as hover text")
        seen["histogram"] = {"edges": [e.text for e in edges], "counts": counts}
        reps = driver.find_elements(By.CSS_SELECTOR, "#exemplars tr > td:first-child")
        check([r.text for r in reps] == ["p50", "p90", "p99", "slowest"],
              f"p50, p90, p99 and slowest exemplars: {[r.text for r in reps]}")
        groups = driver.find_elements(By.CSS_SELECTOR, "details.error-group")
        check(len(groups) >= 1, "an error group")
        g = groups[0]
        summary = g.find_element(By.TAG_NAME, "summary")
        check("ValueError" in summary.text, f"the group names the exception: {summary.text}")
        example = g.find_element(By.CSS_SELECTOR, "a.trace-link")
        check(not example.is_displayed(), "a closed group hides its example")
        summary.click()
        check(example.is_displayed(), "opening the group shows its example trace")
        shot("4b-service-error-group")
        seen["error_group"] = summary.text

        # 5. Dependencies.
        driver.get(f"{base}/dependencies?range=1h")
        shot("5-dependencies")
        check(len(driver.find_elements(By.CSS_SELECTOR, "#depmap")) == 1, "the dependency map")
        seen["dependency_edges"] = len(driver.find_elements(By.CSS_SELECTOR, "#depmap line.edge"))

        # 6. Status.
        driver.get(f"{base}/status")
        shot("6-status")
        parts = [r.get_attribute("data-name") for r in driver.find_elements(By.CSS_SELECTOR, "#status tr.component")]
        want = ["wal", "disk", "indexing", "backlog", "sealing", "store", "memory", "lanes", "dead letters", "sampling policy"]
        # On ClickHouse (the suite run with FAULTLINE_TEST_STORAGE=clickhouse) the writer has a part too.
        if os.environ.get("FAULTLINE_TEST_STORAGE") == "clickhouse":
            want.append("clickhouse")
        check(parts == want, f"status parts: {parts}")
        seen["status"] = driver.find_element(By.ID, "overall").text
        tl = driver.find_element(By.CSS_SELECTOR, "figure#health-timeline svg")
        lanes = [t.text for t in tl.find_elements(By.CSS_SELECTOR, "text.lane")]
        check(lanes == parts, f"a timeline lane per part, in order: {lanes}")
        x0, x1 = int(tl.get_attribute("data-x-min")), int(tl.get_attribute("data-x-max"))
        ticks = tl.find_elements(By.CSS_SELECTOR, "text.tick-x")
        check(x1 - x0 == 3600 and len(ticks) >= 3 and all(x0 <= int(t.get_attribute("data-t")) <= x1 for t in ticks),
              f"the time axis covers the hour: {[t.text for t in ticks]}")
        runs = tl.find_elements(By.CSS_SELECTOR, "rect.run")
        check(len(runs) >= len(parts) and all(
            r.find_element(By.TAG_NAME, "title").get_attribute("textContent").count(" UTC") == 1 for r in runs),
            f"every part has a run with its times as hover text: {len(runs)}")

        # 6b. Tracing health, and no dead ends: unknown pages, traces and services answer
        # 404 with a message and a way back.
        driver.get(f"{base}/tracing-health")
        shot("6b-tracing-health")
        check("Tracing health" in driver.title, f"tracing health page: {driver.title}")
        for i, path in enumerate(["/no/such/page", "/trace/" + "ab" * 16, f"/service/{svc}-missing"]):
            driver.get(base + path)
            shot(f"6c-not-found-{i}")
            text = driver.find_element(By.ID, "error").text
            links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a")]
            check(driver.title.startswith("404") and len(text) > 20, f"{path}: says what is missing: {driver.title}: {text}")
            check(any(h.rstrip("/") == base for h in links), f"{path}: a link back to the services page")
        seen["not_found_pages"] = 3

        # 7. Clock skew: the moved spans are marked, with their amount and basis; the
        # switch shows the stored times.
        if args.skew_trace:
            driver.get(f"{base}/trace/{args.skew_trace}")
            shot("7-skew")
            marked = driver.find_elements(By.CSS_SELECTOR, "#waterfall tr.span-row.skewed")
            check(len(marked) == 3, f"moved spans marked: {len(marked)}")
            marks = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#waterfall .skewmark")]
            check(any("moved −2.0" in m for m in marks), f"the 2 s move is shown: {marks}")
            check(any("moved −29" in m or "moved −30" in m for m in marks), f"the 300 ms move is shown: {marks}")
            marked[0].click()
            detail = driver.find_element(
                By.CSS_SELECTOR, f"tr.detail[data-detail-of='{marked[0].get_attribute('data-span')}']"
            )
            check("Clock skew corrected" in detail.text and "client/server calls" in detail.text,
                  f"the basis in the span's details: {detail.text[:200]}")
            seen["skew_marks"] = marks
            driver.find_element(By.LINK_TEXT, "Show stored times").click()
            shot("7b-skew-raw")
            check(len(driver.find_elements(By.CSS_SELECTOR, "#waterfall tr.skewed")) == 0,
                  "stored times: nothing marked")
            check("Correct clock skew" in driver.find_element(By.ID, "skew").text, "the switch back")
        # 8. Probes.
        if args.probe:
            driver.get(f"{base}/probes")
            shot("8-probes")
            row = driver.find_element(By.CSS_SELECTOR, f"#probes tr.probe[data-name='{args.probe}']")
            check("up" in row.text and "100.0%" in row.text, f"the probe is up, all checks passed: {row.text}")
            row.find_element(By.LINK_TEXT, args.probe).click()
            shot("8b-probe")
            check_chart(driver.find_element(By.CSS_SELECTOR, "figure#probe-duration svg"), seen, min_value_ticks=3)
            tl = driver.find_element(By.CSS_SELECTOR, "figure#probe-timeline svg")
            check([t.text for t in tl.find_elements(By.CSS_SELECTOR, "text.lane")] == ["checks"], "one lane of checks")
            check(len(tl.find_elements(By.CSS_SELECTOR, "rect.run.state-ok")) >= 1, "passed checks drawn")
            links = driver.find_elements(By.CSS_SELECTOR, "#results a.trace-link")
            check(len(links) >= 3, f"each check links to its trace: {len(links)}")
            seen["probe_checks"] = len(links)
    except CheckFailed as e:
        print(f"check failed: {e}", file=sys.stderr)
        return 1
    finally:
        driver.quit()
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
