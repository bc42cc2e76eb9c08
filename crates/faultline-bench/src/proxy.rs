//! The fault proxy's cost with no toxic, against a direct connection on loopback: the
//! latency it adds to a request/response round trip, and the throughput of one connection
//! through it. Talks to a running `faultline proxy` (or any Toxiproxy-compatible API)
//! over HTTP.
//!
//! Client, server and proxy are separate processes, as in a deployment (threads of one
//! process wake each other far faster than processes do on a virtual machine, which would
//! flatter the direct path): the echo and sink servers run in a child process
//! (`faultline-bench proxy-helper serve`). A third path goes through the simplest proxy
//! there is, another child with two blocking threads per connection copying bytes
//! (`proxy-helper relay`): the floor any user-space proxy pays on this machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

/// Flags of `faultline-bench proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The proxy's API.
    #[arg(long, default_value = "127.0.0.1:8474")]
    pub api: String,
    /// Round trips per path (direct and proxied), in alternating rounds of 1,000.
    #[arg(long, default_value_t = 50_000)]
    pub round_trips: usize,
    /// Bytes of a round trip's message.
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// Bytes sent through one connection per throughput run.
    #[arg(long, default_value_t = 4 << 30)]
    pub stream_bytes: u64,
    /// Throughput runs per path.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn api_call(api: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s =
        TcpStream::connect(api).with_context(|| format!("cannot reach the API at {api}"))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

/// Creates (or re-creates) a proxy to `upstream`; its listen address.
fn proxy_to(api: &str, name: &str, upstream: &str) -> anyhow::Result<String> {
    let _ = api_call(api, "DELETE", &format!("/proxies/{name}"), "");
    let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream}).to_string();
    let (status, text) = api_call(api, "POST", "/proxies", &body)?;
    if status != 201 {
        return Err(anyhow!("creating proxy {name} answered {status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text)?;
    v["listen"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no listen address in {text}"))
}

fn spawn_server(handler: fn(TcpStream)) -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || handler(c));
        }
    });
    Ok(addr)
}

/// `faultline-bench proxy-helper`: the other processes of the benchmark.
#[derive(Debug, clap::Subcommand)]
pub enum Helper {
    /// An echo and a sink server; prints their addresses, runs until stdin closes.
    Serve,
    /// A blocking thread-per-direction relay to UPSTREAM; prints its address.
    Relay { upstream: String },
}

/// Runs a helper until its standard input closes (the benchmark ends).
pub fn helper(h: &Helper) -> anyhow::Result<()> {
    match h {
        Helper::Serve => {
            let (e, s) = (spawn_server(echo)?, spawn_server(sink)?);
            println!("{e} {s}");
        }
        Helper::Relay { upstream } => {
            let up = upstream.clone();
            let l = TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?);
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    let Ok(u) = TcpStream::connect(&up) else {
                        continue;
                    };
                    let _ = (c.set_nodelay(true), u.set_nodelay(true));
                    let (Ok(c2), Ok(u2)) = (c.try_clone(), u.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || copy(c, u));
                    std::thread::spawn(move || copy(u2, c2));
                }
            });
        }
    }
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A helper process and the first line it printed; killed when dropped.
struct Child(std::process::Child, String);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_helper(args: &[&str]) -> anyhow::Result<Child> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("proxy-helper")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no helper stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    Ok(Child(child, line.trim().to_string()))
}

fn echo(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 || c.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Reads an 8-byte length, then that many bytes, and answers one byte.
fn sink(mut c: TcpStream) {
    let mut len = [0u8; 8];
    if c.read_exact(&mut len).is_err() {
        return;
    }
    let mut left = u64::from_le_bytes(len);
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
    let _ = c.write_all(b"k");
}

fn round_trips(addr: &str, n: usize, size: usize, out: &mut Vec<Duration>) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    for _ in 0..n {
        let t0 = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        out.push(t0.elapsed());
    }
    Ok(())
}

fn stream(addr: &str, bytes: u64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![1u8; 256 << 10];
    let t0 = Instant::now();
    s.write_all(&bytes.to_le_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut k = [0u8; 1];
    s.read_exact(&mut k)?;
    Ok(bytes as f64 / t0.elapsed().as_secs_f64())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Runs the benchmark; a JSON report.
pub fn run(a: &ProxyArgs) -> anyhow::Result<Value> {
    let servers = start_helper(&["serve"])?;
    let (echo_addr, sink_addr) = servers
        .1
        .split_once(' ')
        .map(|(e, s)| (e.to_string(), s.to_string()))
        .ok_or_else(|| anyhow!("the server helper printed {:?}", servers.1))?;
    let relay_echo = start_helper(&["relay", &echo_addr])?;
    let relay_sink = start_helper(&["relay", &sink_addr])?;
    let echo_proxy = proxy_to(&a.api, "bench-echo", &echo_addr)?;
    let sink_proxy = proxy_to(&a.api, "bench-sink", &sink_addr)?;
    let paths = [
        ("direct", echo_addr.as_str(), sink_addr.as_str()),
        ("floor_relay", relay_echo.1.as_str(), relay_sink.1.as_str()),
        ("faultline", echo_proxy.as_str(), sink_proxy.as_str()),
    ];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    for _ in 0..a.round_trips.div_ceil(1000) {
        for (i, (_, echo, _)) in paths.iter().enumerate() {
            round_trips(echo, 1000, a.message_bytes, &mut lat[i])?;
        }
    }
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..a.runs {
        for (i, (_, _, sink)) in paths.iter().enumerate() {
            tput[i].push(stream(sink, a.stream_bytes)? / 1e9);
        }
    }
    for name in ["bench-echo", "bench-sink"] {
        let _ = api_call(&a.api, "DELETE", &format!("/proxies/{name}"), "");
    }
    let mut report = serde_json::Map::new();
    for v in &mut lat {
        v.sort();
    }
    let direct = lat[0].clone();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let v = &lat[i];
        let t = &mut tput[i];
        t.sort_by(f64::total_cmp);
        report.insert(
            name.to_string(),
            json!({
                "p50_us": pct(v, 0.5), "p99_us": pct(v, 0.99), "p999_us": pct(v, 0.999),
                "added_p50_us": pct(v, 0.5) - pct(&direct, 0.5),
                "added_p99_us": pct(v, 0.99) - pct(&direct, 0.99),
                "throughput_gb_s": t[t.len() / 2],
            }),
        );
    }
    report.insert("round_trips".into(), json!(direct.len()));
    report.insert("message_bytes".into(), json!(a.message_bytes));
    report.insert("stream_bytes".into(), json!(a.stream_bytes));
    Ok(Value::Object(report))
}
