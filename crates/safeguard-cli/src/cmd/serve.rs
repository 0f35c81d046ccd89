//! `safeguard serve`: the moderation API over HTTP (see docs/server.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use safeguard_engine::scheduler::BatcherConfig;
use safeguard_server::chat::ChatHandle;
use safeguard_server::{ApiKeys, AppState, OnError, ServerConfig};

use super::backend::{self, BackendArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnErrorArg {
    /// Answer guard failures as errors (500 guard_error, 422 unparsable_output).
    Error,
    /// Fail closed: answer `unsafe` with a note.
    Unsafe,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SAFEGUARD_ADDR")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// File of API keys, one per line (`#` comments); requests then need
    /// `Authorization: Bearer KEY`. Keys are kept only as SHA-256 hashes.
    #[arg(long, env = "SAFEGUARD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 20 << 20, env = "SAFEGUARD_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Requests per second per API key (`N` or `N/s`); unlimited when absent.
    #[arg(long, value_parser = parse_rate, env = "SAFEGUARD_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Longest time a request may take, in seconds (504 after).
    #[arg(long, default_value_t = 60.0, env = "SAFEGUARD_REQUEST_TIMEOUT")]
    pub request_timeout: f64,
    /// Most images judged together in one guard batch.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Longest time the first image of a batch waits for others, in milliseconds (0: a batch
    /// is what queued while the guard was busy).
    #[arg(long, default_value_t = 0)]
    pub max_wait_ms: u64,
    /// Most images waiting for the guard; more are refused with 429 queue_full.
    #[arg(long, default_value_t = 256)]
    pub queue_capacity: usize,
    /// Most images in one request.
    #[arg(long, default_value_t = 64)]
    pub max_images: usize,
    /// Most API requests handled at once (reading bodies included); more get 503 overloaded.
    /// Bounds body memory to this × --max-body-bytes.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// What a guard failure becomes: an error, or `unsafe` (fail closed).
    #[arg(long, value_enum, default_value = "error", env = "SAFEGUARD_ON_ERROR")]
    pub on_error: OnErrorArg,
    /// The model name answered in `model` fields [default: the model directory's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Test hook: sleep this long before loading the model (to observe the loading state).
    #[arg(long, default_value_t = 0, hide = true)]
    pub debug_load_delay_ms: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive rate (requests per second, e.g. 10 or 10/s)"
        )),
    }
}

/// Builds the backend and the app (the slow part: loading the model).
fn load(
    args: ServeArgs,
    api_keys: ApiKeys,
    config: ServerConfig,
) -> anyhow::Result<(Arc<AppState>, safeguard_server::Router)> {
    let built = backend::build(&args.backend)?;
    let model = args.served_model_name.clone().unwrap_or_else(|| {
        built
            .model
            .as_deref()
            .map(|m| {
                let m = m.trim_end_matches(['/', '\\']);
                m.rsplit(['/', '\\']).next().unwrap_or(m).to_string()
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "safeguard".into())
    });
    let state = Arc::new(AppState::new(built.guard, model, api_keys, config)?);
    // Chat completions run on the local model; other backends answer 501 chat_unavailable.
    let mut router = safeguard_server::app(Arc::clone(&state));
    if let Some(local) = built.local {
        let slots = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        router = safeguard_server::chat::with_chat(router, ChatHandle::new(local, slots));
    }
    Ok((state, router))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !(args.request_timeout > 0.0 && args.request_timeout.is_finite()) {
        bail!("--request-timeout must be a positive number of seconds");
    }
    let api_keys = match &args.api_key_file {
        Some(path) => ApiKeys::from_file(path)?,
        None => ApiKeys::none(),
    };
    if api_keys.is_empty() && !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: serving on {} without --api-key-file: anyone who can reach it can use it",
            args.addr
        );
    }
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        rate_limit: args.rate_limit,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        batcher: BatcherConfig {
            max_batch: args.max_batch,
            max_wait: Duration::from_millis(args.max_wait_ms),
            queue_capacity: args.queue_capacity,
        },
        on_error: match args.on_error {
            OnErrorArg::Error => OnError::Error,
            OnErrorArg::Unsafe => OnError::Unsafe,
        },
        max_images_per_request: args.max_images,
        max_concurrent_requests: args.max_concurrent_requests,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("safeguard-http")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        // Bind first and answer "loading" on the port while the model loads; the same socket
        // then serves the API.
        let socket = std::net::TcpListener::bind(args.addr)
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let early = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
        // Signal handlers first: a SIGTERM right after the announcement below must stop the
        // server cleanly, not kill it with the default action.
        let stop =
            safeguard_server::shutdown_signal_now().context("cannot install signal handlers")?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        eprintln!("listening on http://{local}");
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
        let loading = tokio::spawn(safeguard_server::serve_loading(early, async move {
            let _ = loaded_rx.await;
        }));
        let delay = Duration::from_millis(args.debug_load_delay_ms);
        let load = tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            load(args, api_keys, config)
        });
        let loaded = tokio::select! {
            loaded = load => loaded,
            () = stopped(stop_rx.clone()) => {
                eprintln!("stopped while loading");
                return anyhow::Ok(());
            }
        };
        let _ = loaded_tx.send(());
        loading.await??;
        let (state, router) = loaded.context("the loading task failed")??;
        eprintln!("ready: serving {}", state.model);
        let listener = tokio::net::TcpListener::from_std(socket)?;
        safeguard_server::serve_router(listener, router, state, stopped(stop_rx)).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    });
    // A model still loading after a shutdown signal is not waited for.
    runtime.shutdown_background();
    served?;
    Ok(ExitCode::SUCCESS)
}
