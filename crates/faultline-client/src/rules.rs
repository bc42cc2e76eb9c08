//! `faultline rules check (FILE | --name RULE) [--since 24h]`: evaluates consistency rules
//! (`faultline_checks::rule`) over the spans a running faultline stored, with the engine
//! it runs live, through `POST /api/v1/consistency/check`; so a rule can be tried before
//! it is switched on. The file is checked here first, so a bad selector is reported with
//! its column before anything is sent. `faultline rules list` shows the rules in force.
//! Exit codes: 0 no key violated, 1 some key violated, 2 nothing could be checked.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::ClientError;
use crate::query::{api_error, post};

/// `faultline rules`.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Evaluate consistency rules over stored spans (exit 0: none violated, 1: some, 2:
    /// error).
    Check(CheckArgs),
    /// The rules in force on the server, with their keys per class.
    List {
        /// Print the API's answer (JSON).
        #[arg(long)]
        json: bool,
        /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
        #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
        api: String,
    },
}

/// Flags of `faultline rules check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A rule file: JSON, one rule, an array, or {"consistency": [...]}.
    #[arg(required_unless_present = "name")]
    pub file: Option<PathBuf>,
    /// A rule in force on the server instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub name: Option<String>,
    /// How far back, a duration such as 30m or 24h.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Most traces read per side of a rule.
    #[arg(long, default_value_t = 20_000)]
    pub limit: u64,
    /// Print the API's answers (JSON, one per line).
    #[arg(long)]
    pub json: bool,
    /// Base URL of the faultline HTTP API (https: FAULTLINE_CA_FILE names a PEM CA to trust).
    #[arg(long, env = "FAULTLINE_API", default_value = "http://127.0.0.1:16686")]
    pub api: String,
}

/// The readable report of one rule's answer.
pub fn report(v: &Value, since: &str, api: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rule {} over the last {since}: {} traces read{}",
        v["rule"].as_str().unwrap_or_default(),
        v["traces"],
        if v["truncated"] == true {
            " (TRUNCATED: the search hit its limit; raise --limit or shorten --since)"
        } else {
            ""
        }
    );
    let order = [
        "satisfied",
        "repaired",
        "pending",
        "missing",
        "duplicate",
        "orphan",
        "unmatched",
    ];
    let counts: Vec<String> = order
        .iter()
        .map(|c| format!("{c} {}", v["keys"][c].as_u64().unwrap_or(0)))
        .collect();
    let _ = writeln!(out, "  {}", counts.join("  "));
    for c in ["missing", "duplicate", "orphan", "repaired"] {
        let Some(ex) = v["examples"][c].as_array().filter(|e| !e.is_empty()) else {
            continue;
        };
        let _ = writeln!(out, "  {c}:");
        for k in ex.iter().take(10) {
            let link = k["first"]["link"]
                .as_str()
                .or(k["then"][0]["link"].as_str())
                .unwrap_or_default();
            let late = k["late_ms"].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "    {}{}  {api}{link}",
                k["key"].as_str().unwrap_or_default(),
                if late > 0.0 {
                    format!(" ({:.1} s late)", late / 1000.0)
                } else if k["then_total"].as_u64().unwrap_or(0) > 1 {
                    format!(" ({} Bs)", k["then_total"])
                } else {
                    String::new()
                },
            );
        }
    }
    out
}

fn check(a: CheckArgs) -> Result<u8, ClientError> {
    let api = a.api.trim_end_matches('/');
    let bodies: Vec<Value> = match (&a.file, &a.name) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| ClientError(format!("cannot read rule file {}: {e}", f.display())))?;
            match faultline_checks::rule::parse_rules(&text) {
                Ok(rules) => rules
                    .iter()
                    .map(|r| json!({"rule": r.def, "since": a.since, "limit": a.limit}))
                    .collect(),
                Err(e) => {
                    eprintln!("faultline: rule file {} is not valid: {e}", f.display());
                    return Ok(2);
                }
            }
        }
        (None, Some(n)) => vec![json!({"name": n, "since": a.since, "limit": a.limit})],
        (None, None) => {
            eprintln!("faultline: give a rule file or --name RULE");
            return Ok(2);
        }
    };
    let mut violated = false;
    for body in bodies {
        let (status, v) = post(&format!("{api}/api/v1/consistency/check"), body.to_string())?;
        if status != 200 {
            eprintln!("faultline: {} (HTTP {status})", api_error(&v));
            return Ok(2);
        }
        violated |= v["violated"].as_u64().unwrap_or(0) > 0;
        match a.json {
            true => println!("{v}"),
            false => print!("{}", report(&v, &a.since, api)),
        }
    }
    Ok(u8::from(violated))
}

/// Runs `faultline rules ...`; the exit code.
pub fn run(cmd: RulesCommand) -> Result<u8, ClientError> {
    match cmd {
        RulesCommand::Check(a) => check(a),
        RulesCommand::List { json, api } => {
            let api = api.trim_end_matches('/');
            let (status, _, v) = crate::query::get(&format!("{api}/api/v1/consistency"))?;
            if status != 200 {
                eprintln!("faultline: {} (HTTP {status})", api_error(&v));
                return Ok(2);
            }
            if json {
                println!("{v}");
                return Ok(0);
            }
            for r in v["rules"].as_array().into_iter().flatten() {
                let keys = &r["keys"];
                println!(
                    "{} ({}): satisfied {} repaired {} pending {} missing {} duplicate {} orphan {}",
                    r["name"].as_str().unwrap_or_default(),
                    r["source"].as_str().unwrap_or_default(),
                    keys["satisfied"],
                    keys["repaired"],
                    keys["pending"],
                    keys["missing"],
                    keys["duplicate"],
                    keys["orphan"],
                );
            }
            Ok(0)
        }
    }
}
