//! Choosing and building the guard backend: the flags shared by `check`, `eval` and `bench`,
//! the config file fallbacks, and how outputs without a verdict are counted.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use safeguard_core::guard::{apply_on_unparsable, Guard, Judgement};
use safeguard_core::template::Template;
use safeguard_core::verdict::OnUnparsable;
use safeguard_core::{Error, Format};
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{parse_device, LoadOptions, LocalGuard, LocalGuardOptions};
use safeguard_lite::LiteGuard;
use safeguard_remote::{RemoteConfig, RemoteGuard};
use safeguard_vision::DecodeLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The local VLM when a model is configured (--model, SAFEGUARD_MODEL or the config
    /// file), else the remote backend when endpoints are configured, else lite.
    Auto,
    /// Qwen2.5-VL run natively (needs --model).
    Local,
    /// OpenAI-compatible chat-completions endpoints (vLLM, SGLang, `safeguard serve`).
    Remote,
    /// The embedded open_nsfw classifier: judges sexual/nudity rules only.
    Lite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One forward pass; P(unsafe) from the answer-token logits.
    Score,
    /// Generate `<think>…</think><answer>…</answer>` and parse it.
    Reason,
    /// Generate a LlavaGuard-style JSON answer (rating, category, rationale) and parse it.
    Json,
}

impl Mode {
    /// The prompt format of the mode.
    pub fn format(self) -> Format {
        match self {
            Mode::Score => Format::Verdict,
            Mode::Reason => Format::Reasoning,
            Mode::Json => Format::Json,
        }
    }
}

/// Which backend, and how to build it.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Which guard to run.
    #[arg(long, value_enum, default_value = "auto", env = "SAFEGUARD_BACKEND")]
    pub backend: Backend,
    /// Model directory or Hugging Face id for the local backend [default: `model` of the
    /// config file].
    #[arg(long, env = "SAFEGUARD_MODEL")]
    pub model: Option<String>,
    /// Where the local model runs: cpu, cuda or cuda:N [default: the config file's, else cpu].
    #[arg(long, env = "SAFEGUARD_DEVICE")]
    pub device: Option<String>,
    /// Weight dtype of the local model: f32, bf16 or f16 [default: the config file's, else f32].
    #[arg(long, env = "SAFEGUARD_DTYPE")]
    pub dtype: Option<String>,
    /// A PEFT LoRA adapter directory merged into the local model.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Smallest image area after resizing, in pixels [default: the model's].
    #[arg(long, env = "SAFEGUARD_MIN_PIXELS")]
    pub min_pixels: Option<usize>,
    /// Largest image area after resizing, in pixels [default: the model's].
    #[arg(long, env = "SAFEGUARD_MAX_PIXELS")]
    pub max_pixels: Option<usize>,
    /// Memory for cached policy prefixes (keys/values), in MiB; 0 turns the cache off.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Do not score each prohibited rule separately (score mode; faster, no rules hit).
    #[arg(long)]
    pub no_rules: bool,
    /// Token budget of reason and json modes.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (repeatable;
    /// requests are balanced across them) [default: `endpoints` of the config file].
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// The `model` name sent to the endpoints [default: the config file's].
    #[arg(long, env = "SAFEGUARD_REMOTE_MODEL")]
    pub remote_model: Option<String>,
    /// Per-attempt timeout of remote requests, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Largest accepted image file, in bytes.
    #[arg(long, default_value_t = 64 << 20, env = "SAFEGUARD_MAX_IMAGE_BYTES")]
    pub max_image_bytes: usize,
    /// Most LLM tokens one image may take after resizing (local backend); a larger image is
    /// refused with an error naming its size [default: no limit beyond --max-pixels, i.e.
    /// max_pixels / 784 tokens: 16384 for the released checkpoints].
    #[arg(long, env = "SAFEGUARD_MAX_IMAGE_TOKENS")]
    pub max_image_tokens: Option<usize>,
    /// How the local model computes attention: auto (eager for small inputs, tiled with an
    /// online softmax where the scores would be large), eager or tiled.
    #[arg(long, value_enum, default_value = "auto", env = "SAFEGUARD_ATTENTION")]
    pub attention: Attention,
    /// Guard prompt layout of the local backend: safeguard (policy before the image, the
    /// prefix cache covers the policy), plain, safeguard-vl, llavaguard, or a template file
    /// (TOML; docs/guard.md, "Prompt templates").
    #[arg(long, default_value = "safeguard", env = "SAFEGUARD_TEMPLATE")]
    pub template: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attention {
    /// Eager while one call's scores fit in 64 MiB, tiled beyond.
    Auto,
    /// Always the whole score matrix (memory grows with the square of the sequence).
    Eager,
    /// Always tiled, 512 × 512 scores at a time.
    Tiled,
}

impl Attention {
    fn mode(self) -> safeguard_model::layers::AttentionMode {
        use safeguard_model::layers::{AttentionMode, AUTO_BLOCK};
        match self {
            Attention::Auto => AttentionMode::Auto,
            Attention::Eager => AttentionMode::Eager,
            Attention::Tiled => AttentionMode::Tiled { block: AUTO_BLOCK },
        }
    }
}

/// How each image is judged.
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// Score (one forward pass) or reason (generate a rationale).
    #[arg(long, value_enum, default_value = "score", env = "SAFEGUARD_MODE")]
    pub mode: Mode,
    /// P(unsafe) at or above which an image is unsafe.
    #[arg(long, default_value_t = 0.5, env = "SAFEGUARD_THRESHOLD")]
    pub threshold: f64,
    /// What an output without a verdict (reason/json modes) counts as: error (the image is
    /// reported as failed), safe or unsafe (the judgement says it was a fallback).
    #[arg(long, default_value = "error", value_parser = parse_on_unparsable)]
    pub on_unparsable: OnUnparsable,
    /// Images judged per call to the backend.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

impl JudgeArgs {
    /// Checks the ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            bail!("--threshold must be in [0, 1] (got {})", self.threshold);
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(())
    }
}

/// A built backend and the model it runs, for records such as an evaluation's run.json.
pub struct Built {
    /// The guard.
    pub guard: Arc<dyn Guard>,
    /// The same guard when it is the local model (chat completions need the model itself).
    pub local: Option<Arc<LocalGuard>>,
    /// The model directory or id (local), the served model name (remote), `open_nsfw` (lite).
    pub model: Option<String>,
}

/// Builds the backend the flags, environment and config file select; prints which on stderr.
pub fn build(args: &BackendArgs) -> anyhow::Result<Built> {
    let (config, config_path) = crate::config::load()?;
    let model = args.model.clone().or(config.model.clone());
    let endpoints = if args.endpoints.is_empty() {
        config.endpoints.clone()
    } else {
        args.endpoints.clone()
    };
    let backend = match args.backend {
        Backend::Auto if model.is_some() => Backend::Local,
        Backend::Auto if !endpoints.is_empty() => Backend::Remote,
        Backend::Auto => Backend::Lite,
        other => other,
    };
    let from_config = |what: &str| match &config_path {
        Some(p) => format!(" ({what} from {})", p.display()),
        None => String::new(),
    };
    match backend {
        Backend::Lite | Backend::Remote if args.template != Template::SAFEGUARD => {
            bail!(
                "--template {} applies to the local backend only (the {} backend asks in SafeGuard's own layout)",
                args.template,
                if backend == Backend::Lite { "lite" } else { "remote" }
            );
        }
        Backend::Lite => {
            eprintln!(
                "backend: lite (embedded open_nsfw; judges only the sexual/nudity rules of a policy; \
                 give --model for the Qwen2.5-VL guard)"
            );
            Ok(Built {
                guard: Arc::new(LiteGuard::new(decode_limits(args))?),
                local: None,
                model: Some("open_nsfw".into()),
            })
        }
        Backend::Local => {
            let Some(model) = model else {
                bail!("--backend local needs a model: --model DIR|HF_ID, SAFEGUARD_MODEL, or `model` in the config file");
            };
            let device = args
                .device
                .clone()
                .or(config.device.clone())
                .unwrap_or("cpu".into());
            let dtype = args
                .dtype
                .clone()
                .or(config.dtype.clone())
                .unwrap_or("f32".into());
            eprintln!(
                "backend: local (Qwen2.5-VL {model}, {dtype} on {device}){}",
                if args.model.is_none() {
                    from_config("model")
                } else {
                    String::new()
                }
            );
            let dir = resolve_model(&model, &HubOptions::default())?;
            let opts = LocalGuardOptions {
                load: LoadOptions {
                    dtype: parse_dtype(&dtype).context("--dtype")?,
                    device: parse_device(&device).context("--device")?,
                    lora: args.lora.clone(),
                    ..LoadOptions::default()
                },
                limits: decode_limits(args),
                min_pixels: args.min_pixels,
                max_pixels: args.max_pixels,
                prefix_cache_bytes: args.prefix_cache_mb << 20,
                rules: !args.no_rules,
                max_new_tokens: args.max_new_tokens,
                max_image_tokens: args.max_image_tokens,
                attention: args.attention.mode(),
                template: Template::load(&args.template).context("--template")?,
            };
            let guard = LocalGuard::load(&dir, opts)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            for notice in guard.notices() {
                eprintln!("warning: {notice}");
            }
            let guard = Arc::new(guard);
            Ok(Built {
                guard: Arc::clone(&guard) as Arc<dyn Guard>,
                local: Some(guard),
                model: Some(dir.display().to_string()),
            })
        }
        Backend::Remote => {
            if endpoints.is_empty() {
                bail!("--backend remote needs --endpoint URL (or `endpoints` in the config file)");
            }
            let remote_model = args
                .remote_model
                .clone()
                .or(config.remote_model.clone())
                .or(model)
                .context(
                    "--backend remote needs --remote-model NAME (the model the endpoints serve)",
                )?;
            if !(args.timeout > 0.0 && args.timeout.is_finite()) {
                bail!("--timeout must be a positive number of seconds");
            }
            let mut cfg = RemoteConfig::new(endpoints.clone(), remote_model.clone());
            cfg.api_key = std::env::var("SAFEGUARD_API_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            cfg.timeout = std::time::Duration::from_secs_f64(args.timeout);
            cfg.max_tokens_reason = args.max_new_tokens as u32;
            eprintln!(
                "backend: remote ({remote_model} at {})",
                endpoints.join(", ")
            );
            Ok(Built {
                guard: Arc::new(RemoteGuard::new(cfg)?),
                local: None,
                model: Some(remote_model),
            })
        }
        Backend::Auto => unreachable!("auto is resolved above"),
    }
}

pub fn parse_on_unparsable(s: &str) -> Result<OnUnparsable, String> {
    s.parse().map_err(|e: safeguard_core::Error| e.to_string())
}

/// Applies `--on-unparsable` to a backend's result; other errors become their message.
pub fn fallback(result: Result<Judgement, Error>, on: OnUnparsable) -> Result<Judgement, String> {
    apply_on_unparsable(result, on).map_err(|e| e.to_string())
}

pub fn decode_limits(args: &BackendArgs) -> DecodeLimits {
    DecodeLimits {
        max_encoded_bytes: args.max_image_bytes,
        ..DecodeLimits::default()
    }
}
