//! `safeguard debug forward`: one forward pass of a Qwen2.5-VL checkpoint on explicit token
//! ids and images, dumping the last-position logits and the image embeddings for comparison
//! with the Python reference.
//!
//! `--input-ids` is a comma list of token ids in which the word `<image>` stands for a whole
//! vision block (`<|vision_start|>`, `<|image_pad|>` × N, `<|vision_end|>`, N from the image's
//! grid); the k-th `<image>` takes the k-th `--image`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use safeguard_engine::candle_core::{DType, Tensor};
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{load_model, parse_device, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt};
use safeguard_vision::PreprocessConfig;

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Model directory (config.json, *.safetensors) or a Hugging Face id such as
    /// Qwen/Qwen2.5-VL-7B-Instruct (resolved through the hf-hub cache).
    #[arg(long, env = "SAFEGUARD_MODEL")]
    model: String,
    /// An image file; repeat for several images (the k-th `<image>` takes the k-th one).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Comma list of token ids; the word `<image>` stands for a vision block, e.g.
    /// "151644,<image>,872".
    #[arg(long, allow_hyphen_values = true)]
    input_ids: String,
    /// Smallest image area after resizing, in pixels [default: the model's, else 3136].
    #[arg(long, env = "SAFEGUARD_MIN_PIXELS")]
    min_pixels: Option<usize>,
    /// Largest image area after resizing, in pixels [default: the model's, else 1003520].
    #[arg(long, env = "SAFEGUARD_MAX_PIXELS")]
    max_pixels: Option<usize>,
    /// Weight dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", env = "SAFEGUARD_DTYPE")]
    dtype: String,
    /// Where to run: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature of
    /// safeguard-engine).
    #[arg(long, default_value = "cpu", env = "SAFEGUARD_DEVICE")]
    device: String,
    /// A PEFT LoRA adapter directory to merge into the weights.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Output directory; receives `logits.npy` (f32, [vocab], last position) and
    /// `image_embeds.npy` (f32, [N, hidden], all images in order). Created if missing.
    #[arg(long)]
    out: PathBuf,
}

/// Validated options: everything resolved before the model is loaded.
struct ForwardOptions {
    model_dir: PathBuf,
    images: Vec<PathBuf>,
    input_ids: String,
    preprocess: PreprocessConfig,
    load: LoadOptions,
    out: PathBuf,
}

impl ForwardArgs {
    fn validate(self) -> anyhow::Result<ForwardOptions> {
        let model_dir = resolve_model(&self.model, &HubOptions::default())?;
        let from_model = PreprocessConfig::from_model_dir(&model_dir).with_context(|| {
            format!("reading the preprocessor config of {}", model_dir.display())
        })?;
        let preprocess = super::with_pixel_bounds(from_model, self.min_pixels, self.max_pixels)?;
        let dtype = parse_dtype(&self.dtype).context("--dtype")?;
        let device = parse_device(&self.device).context("--device")?;
        Ok(ForwardOptions {
            model_dir,
            images: self.image,
            input_ids: self.input_ids,
            preprocess,
            load: LoadOptions {
                dtype,
                device,
                lora: self.lora,
                ..LoadOptions::default()
            },
            out: self.out,
        })
    }
}

pub fn run(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    let opts = args.validate()?;
    let loaded = load_model(&opts.model_dir, &opts.load)?;
    let cfg = &loaded.config;
    let (ids, grids, embeds, tokens) =
        super::prepare_input(&loaded, &opts.images, &opts.preprocess, &opts.input_ids)?;
    let hidden = cfg.text_config.hidden_size;
    let prompt = Prompt {
        input_ids: &ids,
        grids: &grids,
        image_embeds: embeds.as_ref(),
    };
    let logits = loaded
        .model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)?;

    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let logits_path = opts.out.join("logits.npy");
    logits
        .to_dtype(DType::F32)?
        .write_npy(&logits_path)
        .with_context(|| format!("cannot write {}", logits_path.display()))?;
    let embeds_path = opts.out.join("image_embeds.npy");
    let embeds = match embeds {
        Some(e) => e.to_dtype(DType::F32)?,
        None => Tensor::zeros((0, hidden), DType::F32, &opts.load.device)?,
    };
    embeds
        .write_npy(&embeds_path)
        .with_context(|| format!("cannot write {}", embeds_path.display()))?;
    eprintln!(
        "{} tokens ({} image tokens from {} images, grids {:?}); wrote {} and {}",
        ids.len(),
        tokens.iter().sum::<usize>(),
        tokens.len(),
        grids,
        logits_path.display(),
        embeds_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
