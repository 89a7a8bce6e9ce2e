//! The `blockops-proxy` command: the proxy, the demo backend, and the tool-call parse tool.

use blockops_proxy::{
    config::{self, KEYS, Settings, Sources},
    demo::{self, DemoOptions},
    server,
};
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use std::{path::PathBuf, process::ExitCode};

fn cli() -> Command {
    let mut serve_args: Vec<Arg> = vec![
        Arg::new("config").long("config").value_name("PATH").help("TOML config file [env: BLOCKOPS_CONFIG] [default: ~/.blockops/config.toml when it exists]"),
        Arg::new("ignore_bad_config").long("ignore-bad-config").action(ArgAction::SetTrue).help("if the config file is invalid, report it and start without it (defaults, environment, flags) instead of exiting [env: BLOCKOPS_IGNORE_BAD_CONFIG=1]"),
        Arg::new("demo").long("demo").action(ArgAction::SetTrue).help("run the built-in demo backend in-process and use it as the backend"),
        Arg::new("demo_tokens_per_sec")
            .long("demo-tokens-per-sec")
            .value_name("N")
            .value_parser(value_parser!(f64))
            .help("pace of the demo backend's replies (0 = instant) [default: 40]"),
    ];
    for k in KEYS {
        let flag: &'static str = Box::leak(k.name.replace('_', "-").into_boxed_str());
        let help = if k.default.is_empty() {
            format!("{} [env: {}]", k.help, k.env)
        } else {
            format!("{} [env: {}] [default: {}]", k.help, k.env, k.default)
        };
        serve_args.push(Arg::new(k.name).long(flag).value_name("VALUE").help(help));
    }
    Command::new("blockops-proxy")
        .version(env!("CARGO_PKG_VERSION"))
        .about("OpenAI-compatible proxy for local LLM servers: text tool calls become tool_calls, the backend stays healthy")
        .args(serve_args)
        .subcommand(
            Command::new("demo-backend")
                .about("run only the built-in demo backend (an OpenAI-compatible scripted model server)")
                .arg(Arg::new("port").long("port").value_parser(value_parser!(u16)).default_value("8082"))
                .arg(Arg::new("host").long("host").default_value("127.0.0.1"))
                .arg(
                    Arg::new("tokens_per_sec")
                        .long("tokens-per-sec")
                        .value_parser(value_parser!(f64))
                        .default_value("40"),
                ),
        )
        .subcommand(
            Command::new("parse")
                .about("translate model output from JSON Lines on stdin: {\"text\", \"tools\"?, \"chunks\"?, \"finish_reason\"?, \"prefill_think\"?} per line; one result line each on stdout")
                .arg(
                    Arg::new("chunk_size")
                        .long("chunk-size")
                        .value_name("N")
                        .value_parser(value_parser!(usize))
                        .help("re-chunk every input into pieces of N characters, as a stream would deliver it"),
                ),
        )
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = cli().get_matches();
    if let Some(("parse", m)) = matches.subcommand() {
        return parse_lines(m.get_one::<usize>("chunk_size").copied());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blockops-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match matches.subcommand() {
        Some(("demo-backend", m)) => runtime.block_on(demo_backend(m)),
        _ => runtime.block_on(serve(&matches)),
    }
}

/// `blockops-proxy parse`: a bad line gets an error object on its own line and the run goes on.
fn parse_lines(chunk_size: Option<usize>) -> ExitCode {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("blockops-proxy parse: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let out = toolcalls::parse_cli_line(&line, chunk_size);
        if writeln!(stdout, "{out}").is_err() {
            // The reader went away (e.g. `| head`): stop quietly.
            return ExitCode::SUCCESS;
        }
    }
    if stdout.flush().is_err() {
        return ExitCode::SUCCESS;
    }
    ExitCode::SUCCESS
}

async fn demo_backend(m: &ArgMatches) -> ExitCode {
    let port = m.get_one::<u16>("port").copied().unwrap_or(8082);
    let host = m
        .get_one::<String>("host")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let tokens_per_sec = m.get_one::<f64>("tokens_per_sec").copied().unwrap_or(40.0);
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("blockops-proxy demo-backend: cannot listen on {host}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "blockops demo backend listening on http://{addr} (OpenAI-compatible; {tokens_per_sec} tokens/s)"
    );
    let task = demo::spawn_on(listener, DemoOptions { tokens_per_sec });
    server::shutdown_signal().await;
    task.abort();
    ExitCode::SUCCESS
}

async fn serve(m: &ArgMatches) -> ExitCode {
    let mut sources = Sources::from_process_env();
    if let Some(path) = m.get_one::<String>("config") {
        sources.config_path = Some(PathBuf::from(path));
    }
    for k in KEYS {
        if let Some(v) = m.get_one::<String>(k.name) {
            sources.flags.push((k.name.to_owned(), v.clone()));
        }
    }
    let ignore_bad_config = m.get_flag("ignore_bad_config")
        || std::env::var("BLOCKOPS_IGNORE_BAD_CONFIG").is_ok_and(|v| v == "1" || v == "true");
    let mut settings = match config::load(&sources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("blockops-proxy: configuration error: {e}");
            // Only a broken file may be skipped, only when asked, and never silently.
            let fallback = (ignore_bad_config && config::check_file(&sources).is_err())
                .then(|| config::load_without_file(&sources));
            match fallback {
                Some(Ok(s)) => {
                    eprintln!(
                        "blockops-proxy: warning: ignoring the config file because of --ignore-bad-config / BLOCKOPS_IGNORE_BAD_CONFIG; \
                         running on defaults, environment and flags until it is fixed"
                    );
                    s
                }
                Some(Err(e)) => {
                    eprintln!("blockops-proxy: configuration error: {e}");
                    return ExitCode::from(2);
                }
                None => {
                    if !ignore_bad_config && config::check_file(&sources).is_err() {
                        eprintln!(
                            "blockops-proxy: fix the file, or start anyway without it with --ignore-bad-config"
                        );
                    }
                    return ExitCode::from(2);
                }
            }
        }
    };
    let mut demo_task = None;
    if m.get_flag("demo") {
        let tokens_per_sec = m
            .get_one::<f64>("demo_tokens_per_sec")
            .copied()
            .unwrap_or(DemoOptions::default().tokens_per_sec);
        match demo::spawn(DemoOptions { tokens_per_sec }).await {
            Ok((addr, task)) => {
                settings.backend_url = format!("http://{addr}");
                settings.backend_url_set = true;
                if settings.model_name.is_empty() {
                    settings.model_name = "demo".into();
                }
                demo_task = Some(task);
            }
            Err(e) => {
                eprintln!("blockops-proxy: cannot start the demo backend: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let handle = match server::start(settings.clone()).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("blockops-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_banner(&settings, &handle, demo_task.is_some());
    server::shutdown_signal().await;
    eprintln!(
        "blockops-proxy: shutting down (in-flight requests may finish for up to {} s)",
        settings.shutdown_grace_secs
    );
    handle.shutdown().await;
    if let Some(task) = demo_task {
        task.abort();
    }
    ExitCode::SUCCESS
}

fn print_banner(settings: &Settings, handle: &server::ServerHandle, demo: bool) {
    let model = if settings.model_name.is_empty() {
        "(any: clients choose)"
    } else {
        &settings.model_name
    };
    let backend = if demo {
        format!("{} (built-in demo backend)", settings.backend_url)
    } else if settings.single_backend() {
        settings.backend_url.clone()
    } else {
        settings
            .effective_backends()
            .iter()
            .map(|b| format!("{} {} [{}]", b.name, b.url, b.models.join(", ")))
            .collect::<Vec<_>>()
            .join("\n             ")
    };
    println!(
        "blockops-proxy {version}\n  \
         listening  {api}  (OpenAI-compatible API)\n  \
         backend    {backend}\n  \
         model      {model}\n  \
         limits     {mc} concurrent, queue {mq}, context warn {warn} / hard {hard} tokens\n  \
         log        {log}\n  \
         dashboard  {ui}",
        version = env!("CARGO_PKG_VERSION"),
        api = handle.api_url(),
        mc = settings.max_concurrent,
        mq = settings.max_queue,
        warn = settings.token_warn_threshold,
        hard = settings.token_hard_threshold,
        log = settings.log_file.display(),
        ui = handle.dashboard_url(),
    );
}
