//! The processes the benchmark runs: started, found ready, measured, and killed on drop.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// A running child process; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub pid: u32,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Result<Proc, String> {
        command.kill_on_drop(true).stdin(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// Reads the `listening on ADDR` line a bench subcommand prints first.
    pub async fn announced_addr(&mut self, within: Duration) -> Result<SocketAddr, String> {
        let stdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| format!("{}: stdout not captured", self.name))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(within, lines.next_line())
            .await
            .map_err(|_| {
                format!(
                    "{} did not announce its address within {within:?}",
                    self.name
                )
            })?
            .map_err(|e| format!("{}: {e}", self.name))?
            .ok_or_else(|| format!("{} exited before announcing its address", self.name))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        line.strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("{}: unexpected first line {line:?}", self.name))
    }

    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.name)),
            _ => None,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Starts a subcommand of this very binary (the backend or a passthrough proxy).
pub async fn spawn_self(name: &str, args: &[&str]) -> Result<(Proc, SocketAddr), String> {
    // /proc/self/exe runs this very program even after a rebuild replaced the file on disk
    // (the target directory is shared; a build during a long run is common).
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe
    } else {
        std::env::current_exe().map_err(|e| e.to_string())?
    };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut proc = Proc::spawn(name, cmd)?;
    let addr = proc.announced_addr(Duration::from_secs(10)).await?;
    Ok((proc, addr))
}

/// A free loopback port, for servers that take a port rather than announcing one. The port is
/// released before the server binds it; on a quiet loopback nobody takes it in between.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Polls `url` until it answers with a success status, the process exits, or `within` passes.
pub async fn wait_ready(proc: &mut Proc, url: &str, within: Duration) -> Result<Duration, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let begin = Instant::now();
    let mut last = String::from("no answer");
    while begin.elapsed() < within {
        if let Some(why) = proc.exited() {
            return Err(why);
        }
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(begin.elapsed()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{} not ready at {url} within {within:?} ({last})",
        proc.name
    ))
}
