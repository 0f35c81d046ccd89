//! `safeguard debug grad`: one forward and backward pass of the SFT loss from a LoRA adapter's
//! weights, dumping the loss and every adapter tensor's gradient for comparison with PyTorch +
//! PEFT (`scripts/fixtures/train_reference.py` computes the same on its side).
//!
//! The loss is the mean cross-entropy of predicting token `i + 1` at every position
//! `i ≥ N − 1` (transformers with `labels[:N] = -100`), `N` = `--target-from`, counted in the
//! expanded sequence (each `<image>` as its vision-start, image-pad × n and vision-end tokens).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{load_model, parse_device, LoadOptions};
use safeguard_model::qwen2_5_vl::train::TrainOptions;
use safeguard_model::qwen2_5_vl::Prompt;
use safeguard_train::grad::sft_gradients;
use safeguard_train::lora::{save_safetensors, TrainableLora};
use safeguard_vision::PreprocessConfig;

#[derive(Debug, clap::Args)]
pub struct GradArgs {
    /// Model directory or Hugging Face id.
    #[arg(long, env = "SAFEGUARD_MODEL")]
    model: String,
    /// The PEFT LoRA adapter directory whose weights the pass starts from.
    #[arg(long)]
    lora: PathBuf,
    /// An image file; repeat for several (the k-th `<image>` takes the k-th one).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Comma list of token ids; the word `<image>` stands for a vision block.
    #[arg(long, allow_hyphen_values = true)]
    input_ids: String,
    /// First target position N in the expanded sequence (tokens N.. count in the loss).
    #[arg(long)]
    target_from: usize,
    /// Smallest image area after resizing, in pixels [default: the model's, else 3136].
    #[arg(long)]
    min_pixels: Option<usize>,
    /// Largest image area after resizing, in pixels [default: the model's, else 1003520].
    #[arg(long)]
    max_pixels: Option<usize>,
    /// Weight dtype: f32, bf16 or f16 (adapter tensors and gradients stay f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Keep the whole graph instead of recomputing each layer (same numbers, more memory).
    #[arg(long)]
    no_recompute: bool,
    /// Output directory for `loss.json` and `grads.safetensors` (created).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: GradArgs) -> anyhow::Result<ExitCode> {
    let model_dir = resolve_model(&args.model, &HubOptions::default())?;
    let from_model = PreprocessConfig::from_model_dir(&model_dir)
        .with_context(|| format!("reading the preprocessor config of {}", model_dir.display()))?;
    let preprocess = super::with_pixel_bounds(from_model, args.min_pixels, args.max_pixels)?;
    let load = LoadOptions {
        dtype: parse_dtype(&args.dtype).context("--dtype")?,
        device: parse_device(&args.device).context("--device")?,
        ..LoadOptions::default()
    };
    let mut loaded = load_model(&model_dir, &load)?;
    let lora = TrainableLora::load(&args.lora, loaded.layout, &load.device)
        .with_context(|| format!("loading the adapter {}", args.lora.display()))?;
    // Attached before the images are embedded: vision-tower pairs need the embeddings' graph.
    lora.attach(&mut loaded.model)?;
    let (ids, grids, embeds, _) =
        super::prepare_input(&loaded, &args.image, &preprocess, &args.input_ids)?;
    let prompt = Prompt {
        input_ids: &ids,
        grids: &grids,
        image_embeds: embeds.as_ref(),
    };
    let opts = TrainOptions {
        recompute: !args.no_recompute,
        ..TrainOptions::default()
    };
    let report = sft_gradients(&mut loaded.model, &lora, &prompt, args.target_from, &opts)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let loss_path = args.out.join("loss.json");
    let json = serde_json::json!({"loss": report.loss, "tokens": report.tokens});
    std::fs::write(&loss_path, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", loss_path.display()))?;
    let grads_path = args.out.join("grads.safetensors");
    save_safetensors(&grads_path, &report.grads)?;
    eprintln!(
        "{} tokens, {} targets, loss {:.6}; wrote {} and {} ({} tensors)",
        ids.len(),
        report.tokens,
        report.loss,
        loss_path.display(),
        grads_path.display(),
        report.grads.len()
    );
    Ok(ExitCode::SUCCESS)
}
