//! `safeguard bench`: throughput and latency of the local guard in score and reason mode,
//! across batch sizes, with the policy-prefix cache off and on (warmed first, so that the
//! cache-on figures are the steady state where the policy prefix is already cached).
//!
//! The model is a checkpoint (`--model DIR`) or a named shape with random weights built in
//! memory (`--shape tiny|small|7b`, see `safeguard_engine::shapes`). The PyTorch companion
//! `scripts/bench/guard_reference.py` runs the same workload with transformers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use safeguard_core::guard::{Guard, GuardRequest};
use safeguard_core::prompt::{self, PromptSpec};
use safeguard_core::template::Template;
use safeguard_core::{Error, Format, Policy};
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::shapes::{fit_tokenizer, named_shape, random_model};
use safeguard_engine::tokenizer::QwenTokenizer;
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{load_model, parse_device, LoadOptions, LocalGuard, LocalGuardOptions};
use safeguard_vision::{decode_and_preprocess, DecodeLimits, PreprocessConfig};
use serde::Serialize;
use serde_json::json;

/// Where `scripts/fetch-tokenizer` puts the Qwen tokenizer.
const QWEN_TOKENIZER: &str = "target/assets/qwen-tokenizer/tokenizer.json";
/// The tiny-guard test fixture's tokenizer, the default for `--shape tiny` when present.
const TINY_TOKENIZER: &str = "crates/safeguard-engine/tests/fixtures/tiny-guard/tokenizer.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// One forward pass per image (plus one short pass per rule question).
    Score,
    /// Greedy generation of `--max-new-tokens` (random weights rarely stop early).
    Reason,
    /// Score, then reason.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheRuns {
    /// Policy-prefix cache off, then on.
    Both,
    /// Only with the cache.
    On,
    /// Only without the cache.
    Off,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A Qwen2.5-VL checkpoint directory or Hugging Face id (with tokenizer.json).
    #[arg(long, conflicts_with = "shape", required_unless_present = "shape")]
    pub model: Option<String>,
    /// A named shape with random weights built in memory: tiny, small or 7b.
    #[arg(long, value_parser = ["tiny", "small", "7b"])]
    pub shape: Option<String>,
    /// tokenizer.json for --shape [default: the tiny-guard fixture's for tiny when present,
    /// else target/assets/qwen-tokenizer/tokenizer.json from scripts/fetch-tokenizer].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Largest image area after resizing, in pixels (448×448 ≈ 256 image tokens).
    #[arg(long, default_value_t = 448 * 448)]
    pub max_pixels: usize,
    /// Directory of images, cycled to --requests per configuration.
    #[arg(long, default_value = "examples/images")]
    pub images: String,
    /// Images judged per configuration and repetition.
    #[arg(long, default_value_t = 8)]
    pub requests: usize,
    /// Images per `judge` call, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub batch_sizes: Vec<usize>,
    /// A preset name, a .md/.toml/.txt policy file, or policy text.
    #[arg(long, default_value = "L3")]
    pub policy: String,
    /// Which modes to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: BenchMode,
    /// Which cache settings to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub cache: CacheRuns,
    /// Token budget of reason mode.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Untimed single-image calls before each configuration (they also warm the cache).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed passes over the --requests images per configuration.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Budget of the policy-prefix cache when on, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Do not ask the per-rule questions in score mode.
    #[arg(long)]
    pub no_rules: bool,
    /// Guard prompt layout: safeguard, plain, safeguard-vl, llavaguard or a template file.
    /// With the image first, the prefix cache holds only the system prompt.
    #[arg(long, default_value = "safeguard")]
    pub template: String,
    /// Write every number and the machine info to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Prompt lengths in tokens.
#[derive(Debug, Serialize)]
struct PromptTokens {
    /// System + policy text before the image (the part the prefix cache holds).
    prefix_score: usize,
    prefix_reason: usize,
    suffix_score: usize,
    suffix_reason: usize,
    /// Per-rule questions asked in score mode (0 with --no-rules).
    rule_questions: usize,
    /// Total tokens of the rule-question suffixes.
    rule_suffix_tokens: usize,
}

/// One measured configuration.
#[derive(Debug, Serialize)]
struct RunResult {
    mode: &'static str,
    batch: usize,
    cache: bool,
    images: usize,
    seconds: f64,
    images_per_s: f64,
    /// Wall time of a `judge` call divided by its images.
    ms_per_image_p50: f64,
    ms_per_image_p95: f64,
    /// Wall time of a whole `judge` call (what each image of the call waits).
    call_ms_p50: f64,
    call_ms_p95: f64,
    /// Prompt tokens per image (prefix + image block + question suffixes).
    prompt_tokens_per_image: f64,
    /// Prompt tokens per second (cached prefix tokens included).
    prefill_tokens_per_s: f64,
    generated_tokens: usize,
    generated_tokens_per_s: f64,
    cache_hits: u64,
    cache_misses: u64,
}

fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

fn default_tokenizer(shape: &str) -> PathBuf {
    if shape == "tiny" && Path::new(TINY_TOKENIZER).is_file() {
        PathBuf::from(TINY_TOKENIZER)
    } else {
        PathBuf::from(QWEN_TOKENIZER)
    }
}

/// Builds the guard; returns it with its preprocessor config and a description of the model.
fn build_guard(args: &BenchArgs) -> anyhow::Result<(LocalGuard, PreprocessConfig, String)> {
    let dtype = parse_dtype(&args.dtype).context("--dtype")?;
    let device = parse_device(&args.device).context("--device")?;
    let opts = LocalGuardOptions {
        load: LoadOptions {
            dtype,
            device: device.clone(),
            ..LoadOptions::default()
        },
        limits: DecodeLimits::default(),
        min_pixels: None,
        max_pixels: Some(args.max_pixels),
        prefix_cache_bytes: args.prefix_cache_mb << 20,
        rules: !args.no_rules,
        max_new_tokens: args.max_new_tokens,
        template: Template::load(&args.template).context("--template")?,
        ..LocalGuardOptions::default()
    };
    let (loaded, tokenizer, mut preprocess, described) = match (&args.model, &args.shape) {
        (Some(model), _) => {
            let dir = resolve_model(model, &HubOptions::default())?;
            let loaded = load_model(&dir, &opts.load)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            let tokenizer = QwenTokenizer::from_file(&dir.join("tokenizer.json"))?;
            let preprocess = PreprocessConfig::from_model_dir(&dir)?;
            (loaded, tokenizer, preprocess, dir.display().to_string())
        }
        (None, Some(shape)) => {
            let path = args
                .tokenizer
                .clone()
                .unwrap_or_else(|| default_tokenizer(shape));
            if !path.is_file() {
                bail!(
                    "no tokenizer at {}: run scripts/fetch-tokenizer (the Qwen tokenizer) or pass \
                     --tokenizer PATH",
                    path.display()
                );
            }
            let tokenizer = QwenTokenizer::from_file(&path)
                .with_context(|| format!("tokenizer {}", path.display()))?;
            let mut cfg = named_shape(shape)?;
            fit_tokenizer(&mut cfg, &tokenizer);
            let loaded = random_model(&cfg, shape, dtype, &device)?;
            let described = format!(
                "shape {shape} (random weights, tokenizer {})",
                path.display()
            );
            (loaded, tokenizer, PreprocessConfig::default(), described)
        }
        (None, None) => bail!("give --model DIR or --shape tiny|small|7b"),
    };
    preprocess.max_pixels = args.max_pixels;
    let guard = LocalGuard::from_parts(loaded, tokenizer, preprocess.clone(), opts)?;
    Ok((guard, preprocess, described))
}

fn prompt_tokens(
    tokenizer: &QwenTokenizer,
    template: &Template,
    policy: &Policy,
    rules: bool,
) -> anyhow::Result<PromptTokens> {
    // A format the template does not have counts 0 tokens (its runs fail, naming the template).
    let len = |spec: &PromptSpec<'_>, prefix: bool| -> anyhow::Result<usize> {
        let Ok(r) = prompt::render_with(template, spec) else {
            return Ok(0);
        };
        Ok(tokenizer
            .encode(if prefix { &r.prefix } else { &r.suffix })?
            .len())
    };
    let score = PromptSpec::new(policy, Format::Verdict);
    let reason = PromptSpec::new(policy, Format::Reasoning);
    let mut rule_questions = 0;
    let mut rule_suffix_tokens = 0;
    if rules {
        for rule in policy.prohibited() {
            let question = prompt::rule_question(rule);
            let spec = PromptSpec {
                question: Some(&question),
                ..PromptSpec::new(policy, Format::Verdict)
            };
            rule_questions += 1;
            rule_suffix_tokens += len(&spec, false)?;
        }
    }
    Ok(PromptTokens {
        prefix_score: len(&score, true)?,
        prefix_reason: len(&reason, true)?,
        suffix_score: len(&score, false)?,
        suffix_reason: len(&reason, false)?,
        rule_questions,
        rule_suffix_tokens,
    })
}

/// The configuration to measure.
struct RunSpec {
    format: Format,
    batch: usize,
    cache: bool,
}

/// What every configuration shares.
struct Workload<'a> {
    guard: &'a LocalGuard,
    policy: &'a Policy,
    images: &'a [Vec<u8>],
    /// Image tokens (with the two vision brackets) of each image.
    image_tokens: &'a [usize],
    tokens: &'a PromptTokens,
    args: &'a BenchArgs,
}

impl Workload<'_> {
    fn request(&self, i: usize, format: Format) -> GuardRequest<'_> {
        GuardRequest {
            image: &self.images[i % self.images.len()],
            policy: self.policy,
            format,
            threshold: 0.5,
        }
    }

    /// Generated tokens of one result; an error other than an unparsable output aborts.
    fn generated(&self, result: Result<safeguard_core::guard::Judgement, Error>) -> usize {
        let text = match result {
            Ok(j) => j.raw_output.unwrap_or_default(),
            Err(Error::Unparsable { output, .. }) => output,
            Err(e) => panic!("judge failed: {e}"),
        };
        if text.is_empty() {
            return 0;
        }
        self.guard
            .tokenizer()
            .encode(&text)
            .map_or(0, |ids| ids.len())
    }

    fn prompt_len(&self, i: usize, format: Format) -> usize {
        let t = self.tokens;
        let image = self.image_tokens[i % self.image_tokens.len()];
        match format {
            Format::Verdict => t.prefix_score + image + t.suffix_score + t.rule_suffix_tokens,
            _ => t.prefix_reason + image + t.suffix_reason,
        }
    }

    fn run(&self, spec: &RunSpec) -> anyhow::Result<RunResult> {
        let guard = self.guard;
        let args = self.args;
        guard.reset_prefix_cache(if spec.cache {
            args.prefix_cache_mb << 20
        } else {
            0
        });
        let warmup = args.warmup.max(usize::from(spec.cache));
        for _ in 0..warmup {
            for r in guard.judge(&[self.request(0, spec.format)]) {
                self.generated(r);
            }
        }
        let before = guard.cache_stats();
        let (mut calls, mut generated, mut prompt, mut images) = (Vec::new(), 0, 0, 0);
        let start = Instant::now();
        for _ in 0..args.repeat {
            let order: Vec<usize> = (0..args.requests).collect();
            for chunk in order.chunks(spec.batch) {
                let requests: Vec<_> = chunk
                    .iter()
                    .map(|&i| self.request(i, spec.format))
                    .collect();
                let t = Instant::now();
                let results = guard.judge(&requests);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                calls.push((ms, chunk.len()));
                for r in results {
                    generated += self.generated(r);
                }
                prompt += chunk
                    .iter()
                    .map(|&i| self.prompt_len(i, spec.format))
                    .sum::<usize>();
                images += chunk.len();
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let after = guard.cache_stats();
        let per_image: Vec<f64> = calls.iter().map(|&(ms, n)| ms / n as f64).collect();
        let call_ms: Vec<f64> = calls.iter().map(|&(ms, _)| ms).collect();
        Ok(RunResult {
            mode: if spec.format == Format::Verdict {
                "score"
            } else {
                "reason"
            },
            batch: spec.batch,
            cache: spec.cache,
            images,
            seconds,
            images_per_s: images as f64 / seconds,
            ms_per_image_p50: percentile(&per_image, 0.5),
            ms_per_image_p95: percentile(&per_image, 0.95),
            call_ms_p50: percentile(&call_ms, 0.5),
            call_ms_p95: percentile(&call_ms, 0.95),
            prompt_tokens_per_image: prompt as f64 / images as f64,
            prefill_tokens_per_s: prompt as f64 / seconds,
            generated_tokens: generated,
            generated_tokens_per_s: generated as f64 / seconds,
            cache_hits: after.hits - before.hits,
            cache_misses: after.misses - before.misses,
        })
    }
}

fn read_images(dir: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    super::check::expand(&[dir.to_string()])?
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
            Ok((p, bytes))
        })
        .collect()
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.requests == 0 || args.repeat == 0 {
        bail!("--requests and --repeat must be at least 1");
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive numbers, e.g. 1,4,8");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let policy = super::policy::load(&args.policy, &[], &[])?;
    let files = read_images(&args.images)?;
    let t = Instant::now();
    let (guard, preprocess, described) = build_guard(&args)?;
    eprintln!(
        "model: {described}, {} on {}, built in {:.1} s",
        args.dtype,
        args.device,
        t.elapsed().as_secs_f64()
    );
    let merge = preprocess.merge_size * preprocess.merge_size;
    let image_tokens = files
        .iter()
        .map(|(p, bytes)| {
            let pre = decode_and_preprocess(bytes, &DecodeLimits::default(), &preprocess)
                .with_context(|| p.display().to_string())?;
            Ok(pre.grid_thw.iter().product::<usize>() / merge + 2)
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let template = guard.template();
    let tokens = prompt_tokens(guard.tokenizer(), template, &policy, !args.no_rules)?;
    print_header(&args, template, &policy, &files, &image_tokens, &tokens);
    let images: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let work = Workload {
        guard: &guard,
        policy: &policy,
        images: &images,
        image_tokens: &image_tokens,
        tokens: &tokens,
        args: &args,
    };
    let results = measure(&work)?;
    print_table(&results);
    let speedups = speedups(&results);
    for s in &speedups {
        println!(
            "prefix-cache speed-up, {} mode, batch {}: {:.2}x",
            s["mode"].as_str().unwrap_or(""),
            s["batch"],
            s["speedup"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(path) = &args.json {
        let value = json!({
            "machine": machine_info(),
            "date": today(),
            "git_commit": git_commit(),
            "model": described,
            "shape": args.shape,
            "dtype": args.dtype,
            "device": args.device,
            "max_pixels": args.max_pixels,
            "image_tokens": image_tokens,
            "images": files.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(),
            "policy": policy.name,
            "prompt_tokens": tokens,
            "rules": !args.no_rules,
            "max_new_tokens": args.max_new_tokens,
            "requests": args.requests,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "results": results,
            "cache_speedups": speedups,
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(work: &Workload<'_>) -> anyhow::Result<Vec<RunResult>> {
    let args = work.args;
    let formats: &[Format] = match args.mode {
        BenchMode::Score => &[Format::Verdict],
        BenchMode::Reason => &[Format::Reasoning],
        BenchMode::Both => &[Format::Verdict, Format::Reasoning],
    };
    let caches: &[bool] = match args.cache {
        CacheRuns::Both => &[false, true],
        CacheRuns::On => &[true],
        CacheRuns::Off => &[false],
    };
    let mut results = Vec::new();
    for &format in formats {
        for &batch in &args.batch_sizes {
            for &cache in caches {
                let r = work.run(&RunSpec {
                    format,
                    batch,
                    cache,
                })?;
                eprintln!(
                    "  {} batch {} cache {}: {:.3} images/s",
                    r.mode,
                    r.batch,
                    if r.cache { "on" } else { "off" },
                    r.images_per_s
                );
                results.push(r);
            }
        }
    }
    Ok(results)
}

fn print_header(
    args: &BenchArgs,
    template: &Template,
    policy: &Policy,
    files: &[(PathBuf, Vec<u8>)],
    image_tokens: &[usize],
    tokens: &PromptTokens,
) {
    println!(
        "images: {} from {} cycled to {} requests x {} repeat(s); max_pixels {} -> {:?} image tokens each (with the vision brackets)",
        files.len(),
        args.images,
        args.requests,
        args.repeat,
        args.max_pixels,
        image_tokens
    );
    let image_first = template
        .format(Format::Verdict)
        .is_ok_and(|f| !f.policy_before_image());
    println!(
        "template {}: {}",
        template.name,
        if image_first {
            "image before the policy, so the prefix cache holds only the system prompt"
        } else {
            "policy before the image, so the prefix cache holds the policy"
        }
    );
    println!(
        "policy {}: prefix {} tokens (score) / {} (reason); question {} / {} tokens",
        policy.name,
        tokens.prefix_score,
        tokens.prefix_reason,
        tokens.suffix_score,
        tokens.suffix_reason
    );
    if args.no_rules {
        println!("rule questions: off (--no-rules)");
    } else {
        println!(
            "rule questions: on, {} per image in score mode ({} tokens in all)",
            tokens.rule_questions, tokens.rule_suffix_tokens
        );
    }
    println!(
        "reason mode: up to {} new tokens; threads {}",
        args.max_new_tokens,
        safeguard_engine::candle_core::utils::get_num_threads()
    );
}

fn print_table(results: &[RunResult]) {
    println!(
        "\n{:<6} {:>5} {:>5} {:>9} {:>11} {:>11} {:>12} {:>10} {:>5}",
        "mode",
        "batch",
        "cache",
        "images/s",
        "p50 ms/img",
        "p95 ms/img",
        "prompt tok/s",
        "gen tok/s",
        "hits"
    );
    for r in results {
        println!(
            "{:<6} {:>5} {:>5} {:>9.3} {:>11.1} {:>11.1} {:>12.1} {:>10.2} {:>5}",
            r.mode,
            r.batch,
            if r.cache { "on" } else { "off" },
            r.images_per_s,
            r.ms_per_image_p50,
            r.ms_per_image_p95,
            r.prefill_tokens_per_s,
            r.generated_tokens_per_s,
            r.cache_hits
        );
    }
}

/// images/s with the cache over images/s without, per mode and batch size.
fn speedups(results: &[RunResult]) -> Vec<serde_json::Value> {
    results
        .iter()
        .filter(|on| on.cache)
        .filter_map(|on| {
            let off = results
                .iter()
                .find(|r| !r.cache && r.mode == on.mode && r.batch == on.batch)?;
            Some(json!({
                "mode": on.mode,
                "batch": on.batch,
                "speedup": on.images_per_s / off.images_per_s,
            }))
        })
        .collect()
}

fn machine_info() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "threads": safeguard_engine::candle_core::utils::get_num_threads(),
        "os": std::env::consts::OS,
    })
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Today's UTC date as YYYY-MM-DD (civil-from-days, H. Hinnant's algorithm).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
