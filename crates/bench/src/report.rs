//! The results: a Markdown table for people (and the README), a JSON file for tools, the targets
//! met or missed, and the CI gate.

use crate::bench::{PathResult, Plan};
use serde::Serialize;
use std::{fmt::Write as _, path::Path, time::SystemTime};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gb: f64,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub value: String,
    /// None when the run lacks what the target needs (a path was unavailable).
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub plan: Plan,
    /// The fixed rate the "added latency" figures are taken at.
    pub headline_rate: f64,
    pub paths: Vec<PathResult>,
    pub targets: Vec<Target>,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gb: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// UTC date and time, `YYYY-MM-DD HH:MM UTC`, from the system clock (days-to-civil conversion
/// after Howard Hinnant's `civil_from_days`).
pub fn utc_now(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn ms(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    pub fn new(plan: &Plan, paths: Vec<PathResult>) -> Report {
        let headline_rate = if plan.rates.contains(&200.0) {
            200.0
        } else {
            plan.rates.first().copied().unwrap_or(0.0)
        };
        let mut r = Report {
            date: utc_now(SystemTime::now()),
            commit: commit(),
            machine: machine(),
            plan: plan.clone(),
            headline_rate,
            paths,
            targets: Vec::new(),
        };
        r.targets = r.evaluate();
        r
    }

    fn path(&self, name: &str) -> Option<&PathResult> {
        self.paths
            .iter()
            .find(|p| p.name == name && p.unavailable.is_none())
    }

    /// The reference passthrough: the HTTP one, or the TCP pipe when only that ran.
    fn reference(&self) -> Option<&PathResult> {
        self.path("passthrough").or_else(|| self.path("tcp"))
    }

    /// (added p50, added p99) of time to first byte and to last byte at `rate`, versus direct.
    fn added(&self, p: &PathResult, rate: f64) -> Option<((f64, f64), (f64, f64))> {
        let direct = self.path("direct")?.at_rate(rate)?;
        let here = p.at_rate(rate)?;
        if here.summary.ok == 0 || direct.summary.ok == 0 {
            return None;
        }
        let (d, h) = (&direct.summary, &here.summary);
        Some((
            (h.ttfb.p50_ms - d.ttfb.p50_ms, h.ttfb.p99_ms - d.ttfb.p99_ms),
            (h.ttlb.p50_ms - d.ttlb.p50_ms, h.ttlb.p99_ms - d.ttlb.p99_ms),
        ))
    }

    fn cpu_ratio(&self, p: &PathResult) -> Option<f64> {
        let reference = self.reference()?.cpu_per_1000?;
        Some(p.cpu_per_1000? / reference.max(1e-9))
    }

    fn evaluate(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let bo = self.path("blockops");
        let rate = self.headline_rate;
        let push = |t: &mut Vec<Target>, target: &str, value: String, met: Option<bool>| {
            t.push(Target {
                target: target.into(),
                value,
                met,
            })
        };
        let ratio = bo.and_then(|b| self.cpu_ratio(b));
        push(
            &mut t,
            "CPU ≤ 1.5× the HTTP passthrough",
            opt(ratio, 2) + "×",
            ratio.map(|r| r <= 1.5),
        );
        let per = bo.and_then(|b| b.cpu_per_1000);
        push(
            &mut t,
            &format!(
                "≤ 0.5 CPU-s per 1000 streamed replies of {} events",
                self.plan.events
            ),
            opt(per, 3),
            per.map(|c| c <= 0.5),
        );
        let added = bo.and_then(|b| self.added(b, rate));
        push(
            &mut t,
            &format!("added p99 TTFB ≤ 1 ms at {rate} req/s"),
            added
                .map(|a| format!("{} ms", ms(a.0.1)))
                .unwrap_or_else(|| "–".into()),
            added.map(|a| a.0.1 <= 1.0),
        );
        push(
            &mut t,
            &format!("added p99 last byte ≤ 2 ms at {rate} req/s"),
            added
                .map(|a| format!("{} ms", ms(a.1.1)))
                .unwrap_or_else(|| "–".into()),
            added.map(|a| a.1.1 <= 2.0),
        );
        let lite = self.path("litellm");
        let max =
            |p: Option<&PathResult>| p.and_then(|p| p.max_rate.as_ref()).map(|m| m.sustained_rps);
        let (bmax, lmax) = (max(bo), max(lite));
        let factor = match (bmax, lmax) {
            (Some(b), Some(l)) if l > 0.0 => Some(b / l),
            _ => None,
        };
        push(
            &mut t,
            "max sustainable rate ≥ 10× LiteLLM's",
            match (bmax, lmax) {
                // LiteLLM failed even the first step of the search.
                (Some(b), Some(0.0)) => {
                    let start = self.plan.search_start;
                    format!("{b:.0} vs < {start:.0} req/s (> {:.0}×)", b / start)
                }
                (Some(b), Some(l)) => format!("{b:.0} vs {l:.0} req/s ({}×)", opt(factor, 1)),
                _ => "–".into(),
            },
            match (bmax, lmax) {
                (Some(b), Some(0.0)) => Some(b > 0.0),
                _ => factor.map(|f| f >= 10.0),
            },
        );
        // Added latency vs LiteLLM's, at the highest fixed rate both sustained.
        let common = self.plan.rates.iter().rev().copied().find(|r| {
            lite.and_then(|l| l.at_rate(*r))
                .is_some_and(|p| p.summary.errors + p.summary.dropped == 0)
                && bo.and_then(|b| b.at_rate(*r)).is_some()
        });
        let vs = common.and_then(|r| Some((r, self.added(bo?, r)?, self.added(lite?, r)?)));
        push(
            &mut t,
            "added p99 last byte ≤ 1/10 of LiteLLM's",
            vs.map(|(r, b, l)| format!("{} vs {} ms at {r} req/s", ms(b.1.1), ms(l.1.1)))
                .unwrap_or_else(|| "–".into()),
            vs.map(|(_, b, l)| b.1.1 <= l.1.1 / 10.0),
        );
        let idle = bo.and_then(|b| b.rss_idle_kb);
        push(
            &mut t,
            "RSS ≤ 20 MB idle",
            mb(idle),
            idle.map(|k| k <= 20 * 1024),
        );
        let at256 = bo
            .and_then(|b| b.closed.iter().find(|p| p.clients == Some(256)))
            .and_then(|p| p.rss_max_kb);
        push(
            &mut t,
            "RSS ≤ 60 MB with 256 concurrent streams",
            mb(at256),
            at256.map(|k| k <= 60 * 1024),
        );
        let translated = bo
            .and_then(|b| b.probe.as_ref())
            .map(|p| (p.structured_calls, p.text_calls));
        push(
            &mut t,
            &format!(
                "tool calls translated ({} per reply)",
                self.plan.calls_per_reply
            ),
            translated
                .map(|(s, x)| format!("{s} structured, {x} left as text"))
                .unwrap_or_else(|| "–".into()),
            translated.map(|(s, x)| s == self.plan.calls_per_reply && x == 0),
        );
        t
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let rate = self.headline_rate;
        let _ = writeln!(
            md,
            "### Benchmark: {} · {} · {} cores · {} GB · Linux {} · commit {}{}\n",
            self.date,
            m.cpu,
            m.cores,
            m.memory_gb,
            m.kernel,
            self.commit,
            if self.plan.short { " · short run" } else { "" }
        );
        let _ = writeln!(
            md,
            "One fake OpenAI-compatible backend, every reply {} SSE events carrying {} Hermes `<tool_call>` blocks as text, \
             no delay; the load generator, the backend and the proxy share the machine's cores. CPU and memory are the \
             path's own process (`/proc/PID`), per request over the fixed-rate phases (max-rate steps included) it sustained; added latency is the path's percentile minus direct's at the same fixed rate.\n",
            self.plan.events, self.plan.calls_per_reply
        );
        let _ = writeln!(
            md,
            "| path | tool calls in reply | CPU-s / 1000 req | CPU-s / 1M events | × HTTP passthrough | added TTFB p50 / p99 @ {rate}/s | added last byte p50 / p99 @ {rate}/s | max sustainable | RSS idle | RSS peak |"
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for p in &self.paths {
            if let Some(why) = &p.unavailable {
                let _ = writeln!(
                    md,
                    "| {} | unavailable ({}) | | | | | | | | |",
                    p.label,
                    why.replace('|', "/")
                );
                continue;
            }
            let calls = p
                .probe
                .as_ref()
                .map(|x| {
                    if x.structured_calls > 0 {
                        format!("{} structured", x.structured_calls)
                    } else {
                        format!("{} as text", x.text_calls)
                    }
                })
                .unwrap_or_default();
            let added = if p.name == "direct" {
                ("–".to_owned(), "–".to_owned())
            } else {
                self.added(p, rate)
                    .map(|(f, l)| {
                        (
                            format!("{} / {} ms", ms(f.0), ms(f.1)),
                            format!("{} / {} ms", ms(l.0), ms(l.1)),
                        )
                    })
                    .unwrap_or_else(|| ("–".into(), "–".into()))
            };
            let max = p
                .max_rate
                .as_ref()
                .map(|m| match m.failed_rps {
                    Some(_) if m.sustained_rps == 0.0 => {
                        format!("< {:.0} req/s", self.plan.search_start)
                    }
                    Some(_) => format!("{:.0} req/s", m.sustained_rps),
                    None => format!("≥ {:.0} req/s (cap)", m.sustained_rps),
                })
                .unwrap_or_else(|| "–".into());
            let ratio = if p.name == "direct" {
                None
            } else {
                self.cpu_ratio(p)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label,
                calls,
                opt(p.cpu_per_1000, 3),
                opt(p.cpu_per_million_events, 1),
                ratio
                    .map(|r| format!("{r:.2}×"))
                    .unwrap_or_else(|| "–".into()),
                added.0,
                added.1,
                max,
                mb(p.rss_idle_kb),
                mb(p.rss_peak_kb),
            );
        }
        let _ = writeln!(
            md,
            "\nMax sustainable: the highest open-loop rate (doubling from {}/s, {} s per step, then one step between) with ≤ 1% \
             errors and p99 last byte ≤ {} ms.\n",
            self.plan.search_start, self.plan.search_step_secs, self.plan.slo_ms
        );

        md.push_str("**Open loop** (fixed rate, latency from the scheduled send; ms)\n\n");
        md.push_str("| path | rate | ok / errors / dropped | TTFB p50 | TTFB p99 | last byte p50 | last byte p99 | CPU-s / 1000 |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        for p in self.paths.iter().filter(|p| p.unavailable.is_none()) {
            for ph in &p.open {
                let s = &ph.summary;
                let _ = writeln!(
                    md,
                    "| {} | {}/s | {} / {} / {} | {} | {} | {} | {} | {} |",
                    p.name,
                    ph.rate.unwrap_or(0.0),
                    s.ok,
                    s.errors,
                    s.dropped,
                    ms(s.ttfb.p50_ms),
                    ms(s.ttfb.p99_ms),
                    ms(s.ttlb.p50_ms),
                    ms(s.ttlb.p99_ms),
                    opt(ph.cpu_per_1000, 3)
                );
            }
        }
        md.push_str("\n**Closed loop** (streaming clients, each sending the next request when one ends)\n\n");
        md.push_str("| path | clients | req/s | errors | last byte p50 | last byte p99 | CPU-s / 1000 | RSS max |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        for p in self.paths.iter().filter(|p| p.unavailable.is_none()) {
            for ph in &p.closed {
                let s = &ph.summary;
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                    p.name,
                    ph.clients.unwrap_or(0),
                    s.throughput_rps,
                    s.errors,
                    ms(s.ttlb.p50_ms),
                    ms(s.ttlb.p99_ms),
                    opt(ph.cpu_per_1000, 3),
                    mb(ph.rss_max_kb)
                );
            }
        }
        md.push_str(
            "\n**Targets** (blockops-proxy)\n\n| target | this run | met |\n|---|---|---|\n",
        );
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {} | {} |", t.target, t.value, met);
        }
        for p in self.paths.iter().filter(|p| !p.skipped_rates.is_empty()) {
            let rates: Vec<String> = p.skipped_rates.iter().map(|r| format!("{r}/s")).collect();
            let _ = writeln!(
                md,
                "\n{}: fixed rates {} not run (over 4× its sustainable rate).",
                p.name,
                rates.join(", ")
            );
        }
        for p in self.paths.iter().filter(|p| p.unavailable.is_some()) {
            let _ = writeln!(
                md,
                "\n{}: unavailable ({})",
                p.name,
                p.unavailable.as_deref().unwrap_or("")
            );
        }
        md
    }

    pub fn write(&self, dir: &Path, markdown: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("bench.json"), json)?;
        std::fs::write(dir.join("bench.md"), markdown)
    }

    /// The CI gate: blockops' CPU per 1000 requests against the reference passthrough's.
    pub fn gate(&self) -> Result<String, String> {
        let factor = self.plan.gate_factor;
        let Some(bo) = self.paths.iter().find(|p| p.name == "blockops") else {
            return Ok("gate: not checked (blockops path not run)".into());
        };
        if let Some(why) = &bo.unavailable {
            return Err(format!("gate: FAILED, blockops-proxy unavailable ({why})"));
        }
        // Behaviour, not a figure: every call of the reply must arrive structured.
        if let Some(p) = &bo.probe
            && (p.structured_calls != self.plan.calls_per_reply || p.text_calls > 0)
        {
            return Err(format!(
                "gate: FAILED, blockops-proxy translated {} of {} tool calls ({} left as text)",
                p.structured_calls, self.plan.calls_per_reply, p.text_calls
            ));
        }
        let Some(reference) = self.reference() else {
            return Ok("gate: not checked (no reference passthrough in this run)".into());
        };
        let (Some(b), Some(r)) = (bo.cpu_per_1000, reference.cpu_per_1000) else {
            return Err("gate: FAILED, no CPU figure for blockops or the passthrough".into());
        };
        let ratio = b / r.max(1e-9);
        let line = format!(
            "gate: blockops {b:.3} CPU-s/1000 req vs {} {r:.3} ({ratio:.2}×",
            reference.name
        );
        match factor {
            None => Ok(format!(
                "{line}; reported, not enforced: pass --gate-factor N to enforce)"
            )),
            Some(f) if ratio > f => Err(format!("{line}, limit {f}×): FAILED")),
            Some(f) => Ok(format!("{line}, limit {f}×): ok")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc_now(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(at(1_709_210_096), "2024-02-29 12:34 UTC");
    }
}
