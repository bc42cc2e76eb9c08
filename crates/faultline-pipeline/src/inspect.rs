//! Read-only inspection of a WAL directory, behind `faultline wal verify` and `faultline
//! wal dump`. Nothing here changes the directory (recovery, truncation and quarantine
//! happen only when the pipeline opens the WAL), so both are safe beside a live server.
//! Output goes to the writers the caller gives; the binary passes standard output.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use faultline_model::{envelope, hex};

/// What stops an inspection.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read WAL directory {dir}: {source}")]
    Read {
        dir: PathBuf,
        source: faultline_wal::WalError,
    },
    #[error("cannot write the report: {0}")]
    Write(#[from] std::io::Error),
}

/// Checks every segment and record of `dir` (a WAL directory or the data directory that
/// holds one) and writes a report to `out`; `Ok(true)` when nothing is corrupt.
pub fn verify(dir: &Path, out: &mut impl Write) -> Result<bool, InspectError> {
    let dir = faultline_wal::dir_of(dir);
    let mut envelope_errors = 0u64;
    let mut spans = 0u64;
    let scan = faultline_wal::scan_dir(&dir, |_, rec| match envelope::decode(rec.payload) {
        Ok(env) => {
            if env.request().is_err() {
                envelope_errors += 1;
            }
            spans += u64::from(env.spans);
        }
        Err(_) => envelope_errors += 1,
    })
    .map_err(|source| InspectError::Read {
        dir: dir.clone(),
        source,
    })?;
    let records: u64 = scan.segments.iter().map(|s| s.records).sum();
    let bytes: u64 = scan.segments.iter().map(|s| s.len).sum();
    writeln!(
        out,
        "{}: {} segments, {records} records, {spans} spans, {bytes} bytes",
        dir.display(),
        scan.segments.len()
    )?;
    let corrupt = scan.corrupt_segments();
    let last = scan.segments.len().saturating_sub(1);
    for (i, s) in scan.segments.iter().enumerate() {
        if let Some(p) = &s.problem {
            let kind = if i == last && !corrupt.iter().any(|c| c.path == s.path) {
                "torn tail (truncated at next start)"
            } else {
                "CORRUPT (quarantined at next start)"
            };
            writeln!(
                out,
                "  {}: {kind}: {p}; {} bytes after the last valid record",
                s.path.display(),
                s.invalid_bytes
            )?;
        }
    }
    for q in &scan.quarantined {
        writeln!(out, "  quarantined earlier: {}", q.display())?;
    }
    for g in &scan.ignored {
        writeln!(out, "  not a segment (ignored): {}", g.display())?;
    }
    if envelope_errors > 0 {
        writeln!(
            out,
            "  {envelope_errors} records have a valid checksum but an unreadable payload"
        )?;
    }
    let clean = corrupt.is_empty() && envelope_errors == 0;
    writeln!(out, "{}", if clean { "ok" } else { "corruption found" })?;
    Ok(clean)
}

/// What `dump` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Every span of every record, not only a line per record.
    pub spans: bool,
    /// JSON lines instead of text.
    pub json: bool,
    /// The first sequence number printed.
    pub from: u64,
    /// At most this many records.
    pub limit: Option<u64>,
}

/// Writes a line per record of `dir` to `out` and a note per damaged segment to `notes`.
/// A closed pipe on `out` (`| head`) ends the dump without an error.
pub fn dump(
    dir: &Path,
    opts: DumpOptions,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<(), InspectError> {
    let dir = faultline_wal::dir_of(dir);
    let mut printed = 0u64;
    let mut write_err: Option<std::io::Error> = None;
    let scan = faultline_wal::scan_dir(&dir, |_, rec| {
        if rec.seq < opts.from || opts.limit.is_some_and(|l| printed >= l) || write_err.is_some() {
            return;
        }
        printed += 1;
        if let Err(e) = dump_record(out, rec, opts.spans, opts.json) {
            write_err = Some(e);
        }
    })
    .map_err(|source| InspectError::Read {
        dir: dir.clone(),
        source,
    })?;
    match write_err {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Some(e) => return Err(e.into()),
        None => {}
    }
    out.flush()?;
    for s in &scan.segments {
        if let Some(p) = &s.problem {
            writeln!(notes, "note: {}: {p}", s.path.display())?;
        }
    }
    Ok(())
}

fn dump_record(
    out: &mut impl Write,
    rec: &faultline_wal::format::RecordRef<'_>,
    spans: bool,
    json_out: bool,
) -> std::io::Result<()> {
    let time = faultline_model::rfc3339(rec.time_ns);
    let decoded =
        envelope::decode(rec.payload).and_then(|env| Ok((env.protocol, env.spans, env.request()?)));
    let (protocol, count, req) = match decoded {
        Ok(d) => d,
        Err(e) if json_out => {
            return writeln!(
                out,
                "{}",
                json!({"seq": rec.seq, "time": time, "error": e.to_string()})
            );
        }
        Err(e) => return writeln!(out, "{} {time} unreadable: {e}", rec.seq),
    };
    let services = faultline_model::service_names(&req);
    let mut trace_ids: Vec<String> = Vec::new();
    let mut list = Vec::new();
    for rs in &req.resource_spans {
        let resource = faultline_model::otlp_json::plain_attributes(
            rs.resource.as_ref().map_or(&[][..], |r| &r.attributes),
        );
        for sp in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let t = hex(&sp.trace_id);
            if !trace_ids.contains(&t) {
                trace_ids.push(t);
            }
            if spans {
                list.push(json!({
                    "trace_id": hex(&sp.trace_id), "span_id": hex(&sp.span_id),
                    "parent_span_id": hex(&sp.parent_span_id), "name": sp.name, "kind": sp.kind,
                    "start_ns": sp.start_time_unix_nano, "end_ns": sp.end_time_unix_nano,
                    "status": sp.status.as_ref().map(|s| json!({"code": s.code, "message": s.message})),
                    "attributes": faultline_model::otlp_json::plain_attributes(&sp.attributes),
                    "events": sp.events.iter().map(|e| json!({"name": e.name, "time_ns": e.time_unix_nano, "attributes": faultline_model::otlp_json::plain_attributes(&e.attributes)})).collect::<Vec<_>>(),
                    "resource": resource,
                }));
            }
        }
    }
    if json_out {
        let mut line = json!({
            "seq": rec.seq, "time": time, "protocol": protocol.as_str(),
            "spans": count, "services": services, "trace_ids": trace_ids,
        });
        if spans {
            line["span_list"] = serde_json::Value::Array(list);
        }
        return writeln!(out, "{line}");
    }
    writeln!(
        out,
        "{} {time} {protocol} spans={count} traces={} services={}",
        rec.seq,
        trace_ids.len(),
        services.join(",")
    )?;
    for sp in &list {
        let parent = sp["parent_span_id"].as_str().filter(|p| !p.is_empty());
        let dur_us = sp["end_ns"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(sp["start_ns"].as_u64().unwrap_or(0))
            / 1000;
        let events: Vec<&str> = sp["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        writeln!(
            out,
            "  span {} {} parent={} name={} kind={} duration_us={dur_us} attributes={} events={} resource={}",
            sp["trace_id"].as_str().unwrap_or_default(),
            sp["span_id"].as_str().unwrap_or_default(),
            parent.unwrap_or("-"),
            sp["name"],
            sp["kind"],
            sp["attributes"],
            events.join(","),
            sp["resource"],
        )?;
    }
    Ok(())
}
