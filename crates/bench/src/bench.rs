//! The benchmark: one fake backend, each path in turn, the same load on each, the proxy process's
//! own CPU and memory read from `/proc`.
//!
//! On a 2-core machine the load generator, the backend and the proxy share the CPUs, so a
//! throughput ratio mostly measures who gets the cores. The headline figures are therefore the
//! proxy's own cost (CPU-seconds per 1000 requests at a fixed rate, measured on its process) and
//! the latency it adds at a fixed rate, compared with direct and with a reference passthrough.

use crate::{
    backend,
    children::{Proc, free_port, spawn_self, wait_ready},
    litellm,
    load::{self, Summary, Target},
    procstat, report,
};
use serde::Serialize;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::process::Command;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The CI version: fewer, shorter phases, under 2 minutes; no LiteLLM unless named in --paths.
    #[arg(long)]
    pub short: bool,
    /// Where to write bench.json and bench.md [default: target/release/bench].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Open-loop rates, requests per second [default: 5,50,200,1000; short: 200].
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Closed-loop client counts [default: 1,16,64,256; short: 16,256].
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Seconds per load phase [default: 5; short: 3].
    #[arg(long)]
    pub duration: Option<f64>,
    /// SSE events per backend reply.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Paths to run: direct, tcp, passthrough, blockops, litellm [default: all; short: direct,
    /// passthrough, blockops].
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// LiteLLM: install (run setup.sh if needed), auto (install unless --short), off.
    #[arg(long, default_value = "auto")]
    pub litellm: String,
    /// The blockops-proxy binary [default: next to this one; built with cargo when run by cargo].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Fail when blockops' CPU per 1000 requests exceeds this multiple of the passthrough's.
    /// Without it the ratio is reported, not enforced: on a shared 2-core machine it moves with
    /// whatever else runs, and a benchmark reports figures while tests assert behaviour.
    #[arg(long)]
    pub gate_factor: Option<f64>,
    /// The latency objective for "sustainable": p99 time to last byte at most this (ms).
    #[arg(long, default_value_t = 500.0)]
    pub slo_ms: f64,
    /// Highest rate the max-rate search tries (requests per second).
    #[arg(long)]
    pub max_rate_cap: Option<f64>,
}

/// What the run will do, with the defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub short: bool,
    pub rates: Vec<f64>,
    pub clients: Vec<usize>,
    pub phase_secs: f64,
    pub events: usize,
    pub calls_per_reply: usize,
    pub paths: Vec<String>,
    pub search_start: f64,
    pub search_cap: f64,
    pub search_step_secs: f64,
    pub slo_ms: f64,
    pub gate_factor: Option<f64>,
}

impl Plan {
    fn from(o: &Options) -> Plan {
        let short = o.short;
        let or = |v: &Vec<f64>, d: &[f64]| if v.is_empty() { d.to_vec() } else { v.clone() };
        let paths: Vec<String> = if o.paths.is_empty() {
            let all = ["direct", "tcp", "passthrough", "blockops", "litellm"];
            all.iter()
                // LiteLLM needs minutes to install and start and serves the same load far
                // slower than the others, so the CI version leaves it out.
                .filter(|p| !(short && matches!(**p, "tcp" | "litellm")))
                .map(|p| p.to_string())
                .collect()
        } else {
            o.paths.clone()
        };
        Plan {
            short,
            rates: or(
                &o.rates,
                if short {
                    &[200.0]
                } else {
                    &[5.0, 50.0, 200.0, 1000.0]
                },
            ),
            clients: if o.clients.is_empty() {
                if short {
                    vec![16, 256]
                } else {
                    vec![1, 16, 64, 256]
                }
            } else {
                o.clients.clone()
            },
            phase_secs: o.duration.unwrap_or(if short { 3.0 } else { 5.0 }),
            events: o.events.max(4),
            calls_per_reply: backend::calls_in_reply(o.events.max(4) - 3),
            paths,
            // Low enough that LiteLLM's rate is found, not just "below the first step".
            search_start: if short { 100.0 } else { 5.0 },
            search_cap: o
                .max_rate_cap
                .unwrap_or(if short { 1600.0 } else { 6400.0 }),
            search_step_secs: if short { 1.0 } else { 2.0 },
            slo_ms: o.slo_ms,
            gate_factor: o.gate_factor,
        }
    }
}

/// One load phase on one path.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub rate: Option<f64>,
    pub clients: Option<usize>,
    pub secs: f64,
    #[serde(flatten)]
    pub summary: Summary,
    /// CPU seconds the path's process used during the phase (none for direct).
    pub cpu_s: Option<f64>,
    pub cpu_per_1000: Option<f64>,
    /// Highest resident memory sampled during the phase, kB.
    pub rss_max_kb: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaxRate {
    /// The highest rate that met the objective (0 when none did).
    pub sustained_rps: f64,
    /// The lowest rate that did not (none when the cap was reached).
    pub failed_rps: Option<f64>,
    pub steps: Vec<Phase>,
}

/// What a path's reply looked like to a client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    pub events: usize,
    pub bytes: usize,
    /// Tool calls delivered as structured `tool_calls` deltas.
    pub structured_calls: usize,
    /// `<tool_call>` markers left in the content text.
    pub text_calls: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub name: String,
    pub label: String,
    pub unavailable: Option<String>,
    pub probe: Option<Probe>,
    pub startup_ms: Option<u64>,
    pub rss_idle_kb: Option<u64>,
    pub rss_peak_kb: Option<u64>,
    pub open: Vec<Phase>,
    pub closed: Vec<Phase>,
    pub max_rate: Option<MaxRate>,
    /// Fixed rates not run: far past the path's sustainable rate.
    pub skipped_rates: Vec<f64>,
    /// CPU seconds per 1000 requests over the fixed-rate phases (max-rate steps included) the
    /// path sustained.
    pub cpu_per_1000: Option<f64>,
    pub cpu_per_million_events: Option<f64>,
}

impl PathResult {
    fn new(name: &str) -> PathResult {
        PathResult {
            name: name.to_owned(),
            label: label(name).to_owned(),
            unavailable: None,
            probe: None,
            startup_ms: None,
            rss_idle_kb: None,
            rss_peak_kb: None,
            open: Vec::new(),
            closed: Vec::new(),
            max_rate: None,
            skipped_rates: Vec::new(),
            cpu_per_1000: None,
            cpu_per_million_events: None,
        }
    }

    pub fn at_rate(&self, rate: f64) -> Option<&Phase> {
        self.open.iter().find(|p| p.rate == Some(rate))
    }
}

pub fn label(name: &str) -> &'static str {
    match name {
        "direct" => "direct to the backend",
        "tcp" => "reference: TCP byte pipe",
        "passthrough" => "reference: HTTP passthrough",
        "blockops" => "blockops-proxy",
        "litellm" => "LiteLLM proxy",
        _ => "unknown",
    }
}

/// A running path: where to send requests and which processes to measure.
struct Running {
    procs: Vec<Proc>,
    url: String,
    pids: Vec<u32>,
    model: String,
    auth: Option<String>,
}

pub async fn run(o: Options) -> ExitCode {
    let plan = Plan::from(&o);
    for p in &plan.paths {
        if label(p) == "unknown" {
            eprintln!(
                "blockops-bench: unknown path {p:?}; use direct, tcp, passthrough, blockops, litellm"
            );
            return ExitCode::from(2);
        }
    }
    let out_dir = o
        .out
        .clone()
        .or_else(|| crate::exe_dir().map(|d| d.join("bench")))
        .unwrap_or_else(|| PathBuf::from("bench"));
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("blockops-bench: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy_bin = if plan.paths.iter().any(|p| p == "blockops") {
        match proxy_binary(o.proxy_bin.clone()).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("blockops-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let events = plan.events.to_string();
    let (backend_proc, backend_addr) =
        match spawn_self("backend", &["backend", "--events", &events]).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("blockops-bench: {e}");
                return ExitCode::FAILURE;
            }
        };
    eprintln!(
        "bench: backend at {backend_addr}, {} SSE events per reply ({} tool calls as Hermes text)",
        plan.events, plan.calls_per_reply
    );
    let client = load::client();
    let mut results: Vec<PathResult> = Vec::new();
    for name in plan.paths.clone() {
        let mut result = PathResult::new(&name);
        eprintln!("bench: {} …", result.label);
        let running = match start_path(
            &name,
            &o,
            &plan,
            backend_addr,
            proxy_bin.as_deref(),
            work.path(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{name}: unavailable ({e})");
                result.unavailable = Some(e);
                results.push(result);
                continue;
            }
        };
        let target = Target {
            client: client.clone(),
            url: running.url.clone(),
            body: backend::request_body(&running.model),
            auth: running.auth.clone(),
        };
        measure(&plan, &mut result, &running, &target).await;
        for p in running.procs {
            p.stop().await;
        }
        results.push(result);
    }
    backend_proc.stop().await;

    let rep = report::Report::new(&plan, results);
    let markdown = rep.markdown();
    println!("{markdown}");
    if let Err(e) = rep.write(&out_dir, &markdown) {
        eprintln!(
            "blockops-bench: cannot write the results to {}: {e}",
            out_dir.display()
        );
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench: wrote {0}/bench.json and {0}/bench.md",
        out_dir.display()
    );
    match rep.gate() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            println!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// The blockops-proxy binary: the one given, or the one next to this binary — rebuilt first when
/// cargo runs us, so `cargo run --release -p blockops-bench -- bench` always measures current code.
async fn proxy_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("--proxy-bin {} does not exist", p.display()))
        };
    }
    let dir = crate::exe_dir().ok_or("cannot find this executable's directory")?;
    let bin = dir.join("blockops-proxy");
    if let Ok(cargo) = std::env::var("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "blockops-proxy", "--manifest-path"])
            .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        eprintln!(
            "bench: building blockops-proxy ({})",
            if release { "release" } else { "debug" }
        );
        let status = cmd
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p blockops-proxy failed ({status})"));
        }
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p blockops-proxy`, or pass --proxy-bin",
            bin.display()
        ))
    }
}

async fn start_path(
    name: &str,
    o: &Options,
    plan: &Plan,
    backend: SocketAddr,
    proxy_bin: Option<&Path>,
    work: &Path,
) -> Result<Running, String> {
    let chat = |base: &str| format!("{base}/v1/chat/completions");
    match name {
        "direct" => Ok(Running {
            procs: Vec::new(),
            url: chat(&format!("http://{backend}")),
            pids: Vec::new(),
            model: "bench".into(),
            auth: None,
        }),
        "tcp" | "passthrough" => {
            let mode = if name == "tcp" { "tcp" } else { "http" };
            let upstream = backend.to_string();
            let (proc, addr) = spawn_self(
                name,
                &["passthrough", "--upstream", &upstream, "--mode", mode],
            )
            .await?;
            let pid = proc.pid;
            Ok(Running {
                procs: vec![proc],
                url: chat(&format!("http://{addr}")),
                pids: vec![pid],
                model: "bench".into(),
                auth: None,
            })
        }
        "blockops" => {
            let bin = proxy_bin.ok_or("no blockops-proxy binary")?;
            let port = free_port()?;
            let home = work.join("blockops-home");
            std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(bin);
            // A clean environment: the user's own BLOCKOPS_* settings must not change the run.
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &home)
                .env("RUST_LOG", "warn")
                .env("BACKEND_URL", format!("http://{backend}"))
                .env("BLOCKOPS_HOST", "127.0.0.1")
                .env("PORT", port.to_string())
                .env("MAX_CONCURRENT", "1024")
                .env("MAX_QUEUE", "100000")
                .env("BLOCKOPS_LOG_FILE", work.join("blockops-traffic.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(work.join("blockops.stderr"))
                        .map_err(|e| e.to_string())?,
                ));
            let mut proc = Proc::spawn("blockops-proxy", cmd)?;
            let base = format!("http://127.0.0.1:{port}");
            if let Err(e) = wait_ready(
                &mut proc,
                &format!("{base}/health"),
                Duration::from_secs(20),
            )
            .await
            {
                let log = std::fs::read_to_string(work.join("blockops.stderr")).unwrap_or_default();
                return Err(format!("{e}; stderr: {}", log.lines().last().unwrap_or("")));
            }
            let pid = proc.pid;
            Ok(Running {
                procs: vec![proc],
                url: chat(&base),
                pids: vec![pid],
                model: "bench".into(),
                auth: None,
            })
        }
        "litellm" => {
            let install = match o.litellm.as_str() {
                "off" => return Err("--litellm off".into()),
                "install" => true,
                _ => !plan.short,
            };
            let exe = litellm::command(install).await?;
            let dir = work.join("litellm");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let (proc, base) = litellm::start(&exe, backend, &dir).await?;
            let pid = proc.pid;
            Ok(Running {
                pids: procstat::with_descendants(pid),
                procs: vec![proc],
                url: chat(&base),
                model: "bench".into(),
                auth: None,
            })
        }
        other => Err(format!("unknown path {other}")),
    }
}

/// Samples a process tree's resident memory until stopped; the maximum, in kB.
struct MemSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl MemSampler {
    fn start(pids: Vec<u32>) -> MemSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let rss = procstat::tree_memory(&pids).rss_kb;
                m.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        MemSampler { stop, max, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

enum Load {
    Open(f64),
    Closed(usize),
}

/// Longest wait for a path to drain what an earlier phase left behind.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Waits until one request goes through within a second: a proxy still working off the backlog
/// of an overloaded phase (LiteLLM keeps serving requests whose clients gave up) would otherwise
/// charge that backlog to the next phase. Bounded by [`SETTLE_LIMIT`]; instant on a path at rest.
async fn settle(target: &Target) {
    let begin = std::time::Instant::now();
    while begin.elapsed() < SETTLE_LIMIT {
        let s = load::one(target, std::time::Instant::now()).await;
        if s.ok && s.ttlb_us < 1_000_000 {
            return;
        }
    }
}

async fn phase(running: &Running, target: &Target, load: Load, secs: f64) -> Phase {
    settle(target).await;
    let pids = &running.pids;
    let cpu0 = procstat::tree_cpu(pids);
    let sampler = (!pids.is_empty()).then(|| MemSampler::start(pids.clone()));
    let duration = Duration::from_secs_f64(secs);
    let (rate, clients, run) = match load {
        Load::Open(r) => (Some(r), None, load::open_loop(target, r, duration).await),
        Load::Closed(c) => (None, Some(c), load::closed_loop(target, c, duration).await),
    };
    let rss_max_kb = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let cpu_s =
        (!pids.is_empty()).then(|| procstat::tree_cpu_delta(&cpu0, &procstat::tree_cpu(pids)));
    let summary = load::summarise(&run);
    let cpu_per_1000 = cpu_s
        .filter(|_| summary.ok > 0)
        .map(|c| c * 1000.0 / summary.ok as f64);
    Phase {
        rate,
        clients,
        secs,
        summary,
        cpu_s,
        cpu_per_1000,
        rss_max_kb,
    }
}

fn sustainable(p: &Phase, slo_ms: f64) -> bool {
    let s = &p.summary;
    let bad = s.errors + s.dropped;
    s.ok > 0 && (bad as f64) <= 0.01 * s.requests as f64 && s.ttlb.p99_ms <= slo_ms
}

async fn measure(plan: &Plan, result: &mut PathResult, running: &Running, target: &Target) {
    let pids = &running.pids;
    if !pids.is_empty() {
        // Idle: started and answered its readiness check, nothing else yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        result.rss_idle_kb = Some(procstat::tree_memory(pids).rss_kb);
    }
    match load::probe(target).await {
        Ok(body) => result.probe = Some(inspect(&body)),
        Err(e) => {
            result.unavailable = Some(format!("probe request failed: {e}"));
            return;
        }
    }
    // Warm up connection pools and allocators; not measured.
    let _ = load::closed_loop(
        target,
        8,
        Duration::from_secs_f64(if plan.short { 0.5 } else { 1.0 }),
    )
    .await;

    // Closed loops first: never more than N requests in flight, and the memory figure for N
    // streams is not inflated by what an overloaded phase left allocated. Then the max-rate
    // search, then the fixed rates, skipping those far past what the path sustains (a backlog
    // of minutes measures nothing and wedges the path for what follows).
    for &c in &plan.clients {
        let p = phase(running, target, Load::Closed(c), plan.phase_secs).await;
        eprintln!("  closed {c:>4} clients: {}", brief(&p));
        result.closed.push(p);
    }
    let max = search_max(plan, running, target).await;
    let ceiling = max
        .failed_rps
        .map(|_| 4.0 * max.sustained_rps.max(plan.search_start));
    result.max_rate = Some(max);
    for &rate in &plan.rates {
        if ceiling.is_some_and(|c| rate > c) {
            eprintln!("  open {rate:>6} req/s: skipped (over 4x the sustainable rate)");
            result.skipped_rates.push(rate);
            continue;
        }
        let p = phase(running, target, Load::Open(rate), plan.phase_secs).await;
        eprintln!("  open {rate:>6} req/s: {}", brief(&p));
        result.open.push(p);
    }
    if !pids.is_empty() {
        result.rss_peak_kb = Some(procstat::tree_memory(pids).peak_kb);
        // The steady-state cost: the fixed-rate phases (max-rate steps included) the path
        // sustained, as many requests as the run has. An overloaded phase charges queueing to
        // every request; when no phase was sustained, all of them count.
        let fixed: Vec<&Phase> = result
            .open
            .iter()
            .chain(result.max_rate.iter().flat_map(|m| m.steps.iter()))
            .collect();
        let steady: Vec<&Phase> = fixed
            .iter()
            .copied()
            .filter(|p| sustainable(p, plan.slo_ms))
            .collect();
        let phases = if steady.is_empty() { fixed } else { steady };
        let (cpu, ok) = phases.iter().fold((0.0, 0u64), |(c, n), p| {
            (c + p.cpu_s.unwrap_or(0.0), n + p.summary.ok)
        });
        if ok > 0 {
            result.cpu_per_1000 = Some(cpu * 1000.0 / ok as f64);
            result.cpu_per_million_events = Some(cpu * 1e6 / (ok as f64 * plan.events as f64));
        }
    }
}

/// Doubles the open-loop rate until the objective is missed, then tries once between the last
/// rate that held and the first that did not. Bounded by the cap (and so in count and time).
async fn search_max(plan: &Plan, running: &Running, target: &Target) -> MaxRate {
    let mut steps = Vec::new();
    let mut sustained = 0.0;
    let mut failed = None;
    let mut rate = plan.search_start;
    while rate <= plan.search_cap {
        let p = phase(running, target, Load::Open(rate), plan.search_step_secs).await;
        let ok = sustainable(&p, plan.slo_ms);
        eprintln!(
            "  max-rate {rate:>6} req/s: {} {}",
            brief(&p),
            if ok { "ok" } else { "missed" }
        );
        steps.push(p);
        if !ok {
            failed = Some(rate);
            break;
        }
        sustained = rate;
        rate *= 2.0;
    }
    if let Some(f) = failed
        && sustained > 0.0
    {
        let mid = (sustained + f) / 2.0;
        let p = phase(running, target, Load::Open(mid), plan.search_step_secs).await;
        let ok = sustainable(&p, plan.slo_ms);
        eprintln!(
            "  max-rate {mid:>6} req/s: {} {}",
            brief(&p),
            if ok { "ok" } else { "missed" }
        );
        steps.push(p);
        if ok {
            sustained = mid;
        } else {
            failed = Some(mid);
        }
    }
    MaxRate {
        sustained_rps: sustained,
        failed_rps: failed,
        steps,
    }
}

fn brief(p: &Phase) -> String {
    let s = &p.summary;
    format!(
        "{} ok, {} errors, {} dropped, {:.0} req/s, ttfb p50 {:.2} p99 {:.2} ms, ttlb p50 {:.2} p99 {:.2} ms{}",
        s.ok,
        s.errors,
        s.dropped,
        s.throughput_rps,
        s.ttfb.p50_ms,
        s.ttfb.p99_ms,
        s.ttlb.p50_ms,
        s.ttlb.p99_ms,
        p.cpu_per_1000
            .map(|c| format!(", {c:.3} CPU-s/1000"))
            .unwrap_or_default()
    )
}

/// Reads an SSE body the way a client would: events, structured tool calls, leftover text calls.
pub fn inspect(body: &str) -> Probe {
    let mut probe = Probe {
        bytes: body.len(),
        ..Probe::default()
    };
    let mut content = String::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        probe.events += 1;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        for choice in v["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str() {
                content.push_str(text);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                // A call starts with the delta that carries its id.
                if call["id"].as_str().is_some_and(|id| !id.is_empty()) {
                    probe.structured_calls += 1;
                }
            }
        }
    }
    probe.text_calls = content.matches("<tool_call>").count();
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_counts_structured_and_text_calls() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"hi <tool_call>\"}}]}\n\n\
                    : keep-alive\n\n\
                    data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n\
                    data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n\
                    data: [DONE]\n\n";
        let p = inspect(body);
        assert_eq!((p.events, p.structured_calls, p.text_calls), (4, 1, 1));
    }

    #[test]
    fn the_direct_reply_has_only_text_calls() {
        let body: String = backend::frames(200)
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let p = inspect(&body);
        assert_eq!(p.events, 200);
        assert_eq!(p.structured_calls, 0);
        assert_eq!(p.text_calls, backend::calls_in_reply(197));
    }

    #[test]
    fn sustainable_needs_few_failures_and_the_latency_objective() {
        let mut p = Phase {
            rate: Some(100.0),
            clients: None,
            secs: 1.0,
            summary: Summary {
                requests: 100,
                ok: 100,
                ..Summary::default()
            },
            cpu_s: None,
            cpu_per_1000: None,
            rss_max_kb: None,
        };
        p.summary.ttlb.p99_ms = 10.0;
        assert!(sustainable(&p, 500.0));
        p.summary.ttlb.p99_ms = 600.0;
        assert!(!sustainable(&p, 500.0));
        p.summary.ttlb.p99_ms = 10.0;
        p.summary.errors = 2;
        assert!(!sustainable(&p, 500.0));
    }
}
