//! `blockops-bench`: the load benchmark, and the processes it runs.
//!
//! ```text
//! blockops-bench bench [--short] [--out DIR] …     the benchmark (see bench.rs)
//! blockops-bench backend --listen ADDR            the fast fake backend
//! blockops-bench passthrough --listen ADDR --upstream ADDR [--mode http|tcp]
//!                                                 the reference proxy (the floor)
//! ```
//!
//! Each server subcommand prints `listening on ADDR` as its first stdout line, so the benchmark can
//! start it on port 0 and learn where it is.

mod backend;
mod bench;
mod children;
mod litellm;
mod load;
mod passthrough;
mod procstat;
mod report;

use clap::{Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "blockops-bench",
    about = "Load benchmark for blockops-proxy: direct vs blockops vs a byte-passthrough proxy vs LiteLLM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark and write the table (Markdown) and figures (JSON).
    Bench(bench::Options),
    /// Run only the fast fake backend.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// SSE events per streaming reply.
        #[arg(long, default_value_t = 200)]
        events: usize,
    },
    /// Run only the reference passthrough proxy.
    Passthrough {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, value_enum, default_value = "http")]
        mode: passthrough::Mode,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blockops-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            // On Ctrl-C or SIGTERM the run is dropped, and with it every child process it started
            // (each is killed on drop): no backend, proxy or LiteLLM is left behind.
            Command::Bench(options) => tokio::select! {
                code = bench::run(options) => code,
                () = stopped() => {
                    eprintln!("blockops-bench: stopped; child processes killed");
                    ExitCode::from(130)
                }
            },
            Command::Backend { listen, events } => {
                serve(listen, |l| backend::serve(l, events)).await
            }
            Command::Passthrough {
                listen,
                upstream,
                mode,
            } => serve(listen, |l| passthrough::serve(l, upstream, mode)).await,
        }
    })
}

async fn serve<F, Fut>(listen: SocketAddr, run: F) -> ExitCode
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("blockops-bench: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("blockops-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockops-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The directory of this executable: where `cargo build --release` put blockops-proxy too.
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(PathBuf::from)
}
