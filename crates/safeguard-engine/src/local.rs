//! The local backend: Qwen2.5-VL run natively, behind the [`Guard`] trait.
//!
//! **Score mode** ([`Format::Verdict`]): the prompt is run once and P(unsafe) is the softmax
//! over the logits of the two answer tokens `unsafe` and `safe` at the first answer position
//! (as ShieldGemma and Llama Guard score), compared with the request's threshold.
//!
//! **Rules hit**: for a structured policy, each prohibited rule gets its own question
//! ([`prompt::rule_question`]) after the same policy prefix and the same image, scored the
//! same way; the keys/values of prefix and image are computed once per image and shared by
//! the whole-policy question and every rule question. Allowed rules are not asked.
//!
//! **Reason mode** ([`Format::Reasoning`], [`Format::Json`]): greedy generation, parsed by
//! [`safeguard_core::verdict::parse`]. P(unsafe) is read at the step that produced the answer
//! word (`yes`/`no` inside `<answer>`, the JSON `rating`): softmax of the chosen token's logit
//! against the logit of the same token with the other answer word. An output without a
//! verdict is an [`Error::Unparsable`] that keeps the whole output; the caller picks the
//! fallback (`--on-unparsable`).
//!
//! **Policy-prefix cache**: the rendered system + policy text before the image is tokenized
//! and run once per exact token prefix; its keys/values live in a [`PrefixCache`] (LRU,
//! bounded in bytes) and every image under that policy continues from a clone. The
//! computation is always split at the prefix boundary, so a judgement is bit-for-bit the same
//! with the cache on or off; the cache only decides whether the prefix is recomputed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Tensor;
use safeguard_core::guard::{Guard, GuardRequest, Judgement, RuleResult, RuleStatus};
use safeguard_core::policy::{Policy, Rule, Stance};
use safeguard_core::prompt::{self, Format, PromptSpec};
use safeguard_core::template::{FormatTemplate, Template};
use safeguard_core::{Assessment, Error};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};
use safeguard_vision::{
    decode_and_preprocess_within, ConfigSource, DecodeLimits, PreprocessConfig, Preprocessed,
    PREPROCESSOR_CONFIG, PROCESSOR_CONFIG,
};

use crate::generation::GenerationConfig;
use crate::prefix_cache::{PrefixCache, PrefixCacheStats};
use crate::sampling::{generate_with, log_softmax, SamplingParams};
use crate::tokenizer::QwenTokenizer;
use crate::weights::{load_model, LoadOptions, LoadedModel};
use crate::EngineError;

/// The name in judgements and outputs.
pub const NAME: &str = "local";

/// How to build a [`LocalGuard`].
#[derive(Debug, Clone)]
pub struct LocalGuardOptions {
    /// dtype, device, LoRA.
    pub load: LoadOptions,
    /// Limits on untrusted image input.
    pub limits: DecodeLimits,
    /// Overrides the model's `min_pixels`.
    pub min_pixels: Option<usize>,
    /// Overrides the model's `max_pixels`.
    pub max_pixels: Option<usize>,
    /// Memory budget of the policy-prefix cache in bytes (0 = off).
    pub prefix_cache_bytes: usize,
    /// Score each prohibited rule of a structured policy in score mode.
    pub rules: bool,
    /// Token budget of reason mode.
    pub max_new_tokens: usize,
    /// Most LLM tokens one image may take (after `smart_resize`); a larger image is refused
    /// with an error naming its size. `None`: only `max_pixels` bounds it (16384 tokens under
    /// the released checkpoints' 12 845 056 pixels).
    pub max_image_tokens: Option<usize>,
    /// How attention is computed (eager or tiled; `Auto` tiles large inputs).
    pub attention: safeguard_model::layers::AttentionMode,
    /// The guard prompt layout (default: SafeGuard's own, policy before the image).
    pub template: Template,
}

impl Default for LocalGuardOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            limits: DecodeLimits::default(),
            min_pixels: None,
            max_pixels: None,
            prefix_cache_bytes: 1 << 30,
            rules: true,
            max_new_tokens: 512,
            max_image_tokens: None,
            attention: safeguard_model::layers::AttentionMode::Auto,
            template: Template::default_template().clone(),
        }
    }
}

/// Token ids the guard scores.
#[derive(Debug, Clone, Copy)]
struct AnswerTokens {
    /// (safe, unsafe) first tokens of the template's score-mode answer words; `None` when the
    /// template has no verdict format.
    score: Option<(u32, u32)>,
    stop: [u32; 2],
}

/// Qwen2.5-VL as a guard. Cheap to share between threads (`&self` everywhere).
#[derive(Debug)]
pub struct LocalGuard {
    loaded: LoadedModel,
    tokenizer: QwenTokenizer,
    preprocess: PreprocessConfig,
    opts: LocalGuardOptions,
    answers: AnswerTokens,
    cache: Mutex<PrefixCache>,
    notices: Vec<String>,
    generation: GenerationConfig,
    chat_template: Option<crate::chat_template::ChatTemplate>,
}

/// A score-mode request ready to run.
struct Prepared {
    index: usize,
    prefix: Vec<u32>,
    kv: KvCache,
    image: ImageInput,
    ids: Vec<u32>,
}

/// One image ready for the model.
struct ImageInput {
    grid: [usize; 3],
    embeds: Tensor,
    block: Vec<u32>,
}

fn backend_error(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: NAME.to_string(),
        message: e.to_string(),
    }
}

/// An engine error as the guard reports it: a non-finite number keeps its own kind (so that
/// callers can tell it from other failures), everything else is a backend error.
fn engine_error(e: EngineError) -> Error {
    match e {
        EngineError::NonFinite { what, value } => Error::NonFinite {
            backend: NAME.to_string(),
            what,
            value,
        },
        other => backend_error(other),
    }
}

impl LocalGuard {
    /// Loads the model, `tokenizer.json` and the image-processor settings of `dir`
    /// (`preprocessor_config.json`, or `processor_config.json` as transformers v5 writes it).
    pub fn load(dir: &Path, opts: LocalGuardOptions) -> Result<Self, EngineError> {
        let loaded = load_model(dir, &opts.load)?;
        let tokenizer = QwenTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let (preprocess, source) =
            PreprocessConfig::from_model_dir_with_source(dir).map_err(|e| EngineError::Input {
                reason: format!("preprocessor config of {}: {e}", dir.display()),
            })?;
        let generation = GenerationConfig::from_model_dir(dir)?;
        let chat_template = crate::chat_template::ChatTemplate::from_model_dir(dir)?;
        let mut guard = Self::from_parts(loaded, tokenizer, preprocess, opts)?;
        guard.generation = generation;
        guard.chat_template = chat_template;
        if source == ConfigSource::Defaults {
            let p = &guard.preprocess;
            guard.notices.push(format!(
                "{} has neither {PREPROCESSOR_CONFIG} nor {PROCESSOR_CONFIG}: images are resized \
                 within min_pixels {} and max_pixels {} (the image processor's defaults{}); the \
                 released Qwen2.5-VL checkpoints use max_pixels 12845056, set --max-pixels to match \
                 the model's training",
                dir.display(),
                p.min_pixels,
                p.max_pixels,
                if guard.opts.min_pixels.is_some() || guard.opts.max_pixels.is_some() {
                    ", as overridden by --min-pixels/--max-pixels"
                } else {
                    ""
                }
            ));
        }
        Ok(guard)
    }

    /// What the user should know about how the model runs (settings that fell back to
    /// defaults, dtypes changed for safety); the CLI prints them as warnings.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// A guard from an already built model (e.g. random weights of a named shape for
    /// `safeguard bench`), its tokenizer and preprocessor config; `opts.load` is only used
    /// for its device. The pixel-bound overrides of `opts` are applied to `preprocess`.
    pub fn from_parts(
        mut loaded: LoadedModel,
        tokenizer: QwenTokenizer,
        mut preprocess: PreprocessConfig,
        opts: LocalGuardOptions,
    ) -> Result<Self, EngineError> {
        if let Some(min) = opts.min_pixels {
            preprocess.min_pixels = min;
        }
        if let Some(max) = opts.max_pixels {
            preprocess.max_pixels = max;
        }
        preprocess.validate().map_err(|e| EngineError::Input {
            reason: format!("pixel bounds: {e}"),
        })?;
        let vision = &loaded.config.vision_config;
        if preprocess.patch_dim() != vision.patch_dim() {
            return Err(EngineError::Input {
                reason: format!(
                    "preprocessor_config.json gives {} values per patch but the model expects {}",
                    preprocess.patch_dim(),
                    vision.patch_dim()
                ),
            });
        }
        loaded.model.set_attention_mode(opts.attention);
        let special = tokenizer.special();
        // Score mode compares the first tokens of the template's answer words.
        let score = match opts.template.format(Format::Verdict) {
            Ok(f) => Some(answer_pair(&tokenizer, &f.safe, &f.unsafe_)?),
            // Without a verdict format there is no score mode (its requests fail, naming the
            // template's formats).
            Err(_) => None,
        };
        let answers = AnswerTokens {
            score,
            stop: [special.im_end, special.endoftext],
        };
        let cache = Mutex::new(PrefixCache::new(opts.prefix_cache_bytes));
        let mut notices = Vec::new();
        let model = &loaded.model;
        if model.vision_dtype() != model.dtype() {
            notices.push(format!(
                "the vision tower runs in {:?}, not {:?}: Qwen2.5-VL's vision tower overflows \
                 float16 on real weights (its image embeddings would be NaN); the decoder stays {:?}",
                model.vision_dtype(),
                model.dtype(),
                model.dtype()
            ));
        }
        Ok(Self {
            loaded,
            tokenizer,
            preprocess,
            opts,
            answers,
            cache,
            notices,
            generation: GenerationConfig::default(),
            chat_template: None,
        })
    }

    /// The model directory.
    pub fn model_dir(&self) -> &PathBuf {
        &self.loaded.dir
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// Counters of the policy-prefix cache.
    pub fn cache_stats(&self) -> PrefixCacheStats {
        self.cache.lock().expect("prefix cache lock").stats()
    }

    /// Empties the policy-prefix cache and gives it a new budget in bytes (0 = off).
    pub fn reset_prefix_cache(&self, budget: usize) {
        *self.cache.lock().expect("prefix cache lock") = PrefixCache::new(budget);
    }

    /// Bytes the keys/values of `tokens` tokens take.
    fn kv_bytes(&self, tokens: usize) -> usize {
        let t = &self.loaded.config.text_config;
        tokens
            * t.num_hidden_layers
            * 2
            * t.num_key_value_heads
            * t.head_dim()
            * self.loaded.model.dtype().size_in_bytes()
    }

    /// The token ids of `policy`'s prompt prefix under `format` and the keys/values after them
    /// (from the cache, or computed and stored).
    fn prefix(&self, policy: &Policy, format: Format) -> Result<(Vec<u32>, KvCache), Error> {
        let ids = self.prefix_ids(policy, format)?;
        if let Some(kv) = self.cache.lock().expect("prefix cache lock").get(&ids) {
            return Ok((ids, kv));
        }
        let mut kv = KvCache::new();
        let text_only = Prompt {
            input_ids: &ids,
            grids: &[],
            image_embeds: None,
        };
        self.loaded
            .model
            .forward(&text_only, &mut kv, Logits::Last)
            .map_err(backend_error)?;
        let bytes = self.kv_bytes(ids.len());
        self.cache
            .lock()
            .expect("prefix cache lock")
            .insert(&ids, kv.clone(), bytes);
        Ok((ids, kv))
    }

    fn image(&self, bytes: &[u8]) -> Result<ImageInput, Error> {
        let pre = self
            .preprocess_image(bytes)
            .map_err(|e| Error::InvalidImage {
                message: e.to_string(),
            })?;
        let dim = self.preprocess.patch_dim();
        let rows = pre.pixel_values.len() / dim;
        let device = &self.opts.load.device;
        let pixel_values =
            Tensor::from_vec(pre.pixel_values, (rows, dim), device).map_err(backend_error)?;
        let embeds = self
            .loaded
            .model
            .embed_images(&VisionInputs {
                pixel_values,
                grid_thw: vec![pre.grid_thw],
            })
            .map_err(backend_error)?;
        let block = self.image_block(self.loaded.model.image_tokens(pre.grid_thw));
        Ok(ImageInput {
            grid: pre.grid_thw,
            embeds,
            block,
        })
    }

    /// `<|vision_start|>`, `tokens` × `<|image_pad|>`, `<|vision_end|>`.
    fn image_block(&self, tokens: usize) -> Vec<u32> {
        let cfg = &self.loaded.config;
        let mut block = Vec::with_capacity(tokens + 2);
        block.push(cfg.vision_start_token_id);
        block.extend(std::iter::repeat_n(cfg.image_token_id, tokens));
        block.push(cfg.vision_end_token_id);
        block
    }

    /// The tokens of the prompt prefix (system prompt and policy, up to the image).
    fn prefix_ids(&self, policy: &Policy, format: Format) -> Result<Vec<u32>, Error> {
        let rendered = prompt::render_with(&self.opts.template, &PromptSpec::new(policy, format))?;
        self.tokenizer
            .encode(&rendered.prefix)
            .map_err(backend_error)
    }

    /// The whole prompt's token ids as the guard runs them: prefix, the image block with
    /// `image_tokens` pads, and the question (`None` = the default one) with the format's
    /// instruction. Tokenizing the pieces apart equals tokenizing the whole text, because the
    /// image block's special tokens split the text before BPE (tested).
    pub fn prompt_ids(
        &self,
        policy: &Policy,
        format: Format,
        question: Option<&str>,
        image_tokens: usize,
    ) -> Result<Vec<u32>, Error> {
        let mut ids = self.prefix_ids(policy, format)?;
        ids.extend(self.image_block(image_tokens));
        ids.extend(self.suffix(policy, format, question)?);
        Ok(ids)
    }

    /// The tokens after the image block for `question` (None = the default question).
    fn suffix(
        &self,
        policy: &Policy,
        format: Format,
        question: Option<&str>,
    ) -> Result<Vec<u32>, Error> {
        let spec = PromptSpec {
            question,
            ..PromptSpec::new(policy, format)
        };
        self.tokenizer
            .encode(&prompt::render_with(&self.opts.template, &spec)?.suffix)
            .map_err(backend_error)
    }

    /// P(unsafe) of each row of last-position logits `[rows, vocab]`.
    fn p_unsafe_rows(&self, logits: &Tensor) -> Result<Vec<f64>, Error> {
        (0..logits.dim(0).map_err(backend_error)?)
            .map(|i| self.p_unsafe_row(logits, i))
            .collect()
    }

    /// P(unsafe) of row `i` of last-position logits `[rows, vocab]`.
    fn p_unsafe_row(&self, logits: &Tensor, i: usize) -> Result<f64, Error> {
        let (safe, unsafe_) = match self.answers.score {
            Some(pair) => pair,
            None => return Err(self.opts.template.format(Format::Verdict).unwrap_err()),
        };
        let row = logits.get(i).map_err(backend_error)?;
        crate::sampling::p_unsafe(&row, unsafe_, safe).map_err(engine_error)
    }

    /// P(unsafe) of each row `base` + suffix, all rows continuing from `kv` (the keys/values
    /// of `base`) in one batched pass.
    fn score_rows(
        &self,
        base: &[u32],
        kv: &KvCache,
        image: &ImageInput,
        suffixes: &[Vec<u32>],
    ) -> Result<Vec<f64>, Error> {
        let grids = [image.grid];
        let ids: Vec<Vec<u32>> = suffixes
            .iter()
            .map(|suffix| base.iter().chain(suffix).copied().collect())
            .collect();
        let rows: Vec<Prompt<'_>> = ids
            .iter()
            .map(|ids| Prompt {
                input_ids: ids,
                grids: &grids,
                image_embeds: Some(&image.embeds),
            })
            .collect();
        let logits = self
            .loaded
            .model
            .forward_last_batch(&rows, kv)
            .map_err(backend_error)?;
        self.p_unsafe_rows(&logits)
    }

    /// Score mode without rule questions for several requests: the tails (image block +
    /// question) of all requests under the same prefix run in one batched pass.
    fn judge_score_batch(&self, requests: &[&GuardRequest<'_>]) -> Vec<Result<Judgement, Error>> {
        let start = Instant::now();
        let mut out: Vec<Option<Result<Judgement, Error>>> =
            requests.iter().map(|_| None).collect();
        let mut ready: Vec<Prepared> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            let prepared = self
                .prefix(request.policy, Format::Verdict)
                .and_then(|(prefix, kv)| {
                    let image = self.image(request.image)?;
                    let suffix = self.suffix(request.policy, Format::Verdict, None)?;
                    let ids: Vec<u32> = prefix
                        .iter()
                        .chain(&image.block)
                        .chain(&suffix)
                        .copied()
                        .collect();
                    Ok(Prepared {
                        index,
                        prefix,
                        kv,
                        image,
                        ids,
                    })
                });
            match prepared {
                Ok(p) => ready.push(p),
                Err(e) => out[index] = Some(Err(e)),
            }
        }
        while let Some(first) = ready.first() {
            let prefix = first.prefix.clone();
            let (group, rest): (Vec<Prepared>, Vec<Prepared>) =
                ready.into_iter().partition(|r| r.prefix == prefix);
            ready = rest;
            let grids: Vec<[usize; 3]> = group.iter().map(|r| r.image.grid).collect();
            let rows: Vec<Prompt<'_>> = group
                .iter()
                .zip(&grids)
                .map(|(r, grid)| Prompt {
                    input_ids: &r.ids,
                    grids: std::slice::from_ref(grid),
                    image_embeds: Some(&r.image.embeds),
                })
                .collect();
            let logits = self
                .loaded
                .model
                .forward_last_batch(&rows, &group[0].kv)
                .map_err(backend_error);
            for (k, r) in group.iter().enumerate() {
                // Scored row by row: a non-finite score fails its own image only.
                let score = match &logits {
                    Ok(logits) => self.p_unsafe_row(logits, k),
                    Err(e) => Err(backend_error(e)),
                };
                out[r.index] = Some(
                    score.map(|p| self.score_judgement(requests[r.index], p, &[], &[], start)),
                );
            }
        }
        out.into_iter()
            .map(|r| r.expect("every request answered"))
            .collect()
    }

    fn judge_score(&self, request: &GuardRequest<'_>) -> Result<Judgement, Error> {
        let start = Instant::now();
        let policy = request.policy;
        let (prefix_ids, prefix_kv) = self.prefix(policy, Format::Verdict)?;
        let image = self.image(request.image)?;
        // Keys/values of prefix + image block, shared by every question about this image.
        let base: Vec<u32> = prefix_ids.iter().chain(&image.block).copied().collect();
        let mut kv = prefix_kv;
        let grids = [image.grid];
        let with_image = Prompt {
            input_ids: &base,
            grids: &grids,
            image_embeds: Some(&image.embeds),
        };
        self.loaded
            .model
            .forward(&with_image, &mut kv, Logits::Last)
            .map_err(backend_error)?;
        let prohibited: Vec<_> = if self.opts.rules {
            policy.prohibited().collect()
        } else {
            Vec::new()
        };
        let mut suffixes = vec![self.suffix(policy, Format::Verdict, None)?];
        for rule in &prohibited {
            let question = prompt::rule_question(rule);
            suffixes.push(self.suffix(policy, Format::Verdict, Some(&question))?);
        }
        let scores = self.score_rows(&base, &kv, &image, &suffixes)?;
        Ok(self.score_judgement(request, scores[0], &prohibited, &scores[1..], start))
    }

    /// The judgement of score mode from the whole-policy score `p` and the scores of the
    /// prohibited rules asked.
    fn score_judgement(
        &self,
        request: &GuardRequest<'_>,
        p: f64,
        prohibited: &[&Rule],
        rule_scores: &[f64],
        start: Instant,
    ) -> Judgement {
        let threshold = request.threshold;
        let rules: Vec<RuleResult> = prohibited
            .iter()
            .zip(rule_scores)
            .map(|(rule, &score)| RuleResult {
                id: rule.id.clone(),
                stance: Stance::Prohibited,
                status: if score >= threshold {
                    RuleStatus::Hit
                } else {
                    RuleStatus::Clear
                },
                score: Some(score),
            })
            .collect();
        let rules_hit: Vec<String> = rules
            .iter()
            .filter(|r| r.status == RuleStatus::Hit)
            .map(|r| r.id.clone())
            .collect();
        let verdict = if p >= threshold {
            Assessment::Unsafe
        } else {
            Assessment::Safe
        };
        let note = match (verdict, rules_hit.is_empty(), rules.is_empty()) {
            (Assessment::Unsafe, true, false) => Some(
                "unsafe under the policy as a whole, but no single prohibited rule scored above the threshold"
                    .to_string(),
            ),
            (Assessment::Safe, false, _) => Some(format!(
                "safe under the policy as a whole, but rule question(s) {} scored above the threshold",
                rules_hit.join(", ")
            )),
            _ => None,
        };
        Judgement {
            verdict,
            p_unsafe: Some(p),
            rules_hit,
            rules,
            rationale: None,
            raw_output: None,
            note,
            backend: NAME.to_string(),
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        }
    }

    fn judge_generate(&self, request: &GuardRequest<'_>) -> Result<Judgement, Error> {
        let start = Instant::now();
        let format = request.format;
        let policy = request.policy;
        let (prefix_ids, prefix_kv) = self.prefix(policy, format)?;
        let image = self.image(request.image)?;
        let suffix = self.suffix(policy, format, None)?;
        let ids: Vec<u32> = prefix_ids
            .iter()
            .chain(&image.block)
            .chain(&suffix)
            .copied()
            .collect();
        let grids = [image.grid];
        let full = Prompt {
            input_ids: &ids,
            grids: &grids,
            image_embeds: Some(&image.embeds),
        };
        // generate()'s decoding under the checkpoint's generation_config.json (greedy with its
        // repetition penalty for the released models); the seed makes sampling repeatable.
        let params = SamplingParams {
            max_new_tokens: self.opts.max_new_tokens,
            stop_tokens: self.stop_tokens(),
            ..self.generation.generate_defaults()
        };
        let asked = self.opts.template.format(format)?;
        let mut scorer = AnswerScorer::new(&self.tokenizer, format, asked);
        let generation = generate_with(
            &self.loaded.model,
            &full,
            &params,
            prefix_kv,
            |logits, chosen| scorer.step(logits, chosen.token),
        )
        .map_err(engine_error)?;
        let text = self
            .tokenizer
            .decode(&generation.tokens, true)
            .map_err(backend_error)?;
        let p_unsafe = scorer.p_unsafe;
        let parsed = safeguard_core::verdict::parse(&text, asked.parser);
        let mut judgement = Judgement {
            verdict: Assessment::Unassessed,
            p_unsafe,
            rules_hit: Vec::new(),
            rules: Vec::new(),
            rationale: None,
            raw_output: Some(text.clone()),
            note: None,
            backend: NAME.to_string(),
            latency_ms: 0.0,
        };
        match parsed {
            Ok(parsed) => {
                judgement.verdict = match p_unsafe {
                    Some(p) if p >= request.threshold => Assessment::Unsafe,
                    Some(_) => Assessment::Safe,
                    None => parsed.verdict.into(),
                };
                if p_unsafe.is_none() {
                    judgement.note = Some(
                        "no score: the answer token could not be located in the output".into(),
                    );
                }
                if judgement.verdict == Assessment::Unsafe {
                    judgement.rules_hit =
                        rules_named(policy, &parsed.categories, &parsed.rationale);
                    judgement.rules = judgement
                        .rules_hit
                        .iter()
                        .map(|id| RuleResult {
                            id: id.clone(),
                            stance: Stance::Prohibited,
                            status: RuleStatus::Hit,
                            score: None,
                        })
                        .collect();
                }
                judgement.rationale = parsed.rationale;
            }
            Err(reason) => {
                return Err(Error::Unparsable {
                    backend: NAME.to_string(),
                    reason,
                    output: text,
                });
            }
        }
        judgement.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        Ok(judgement)
    }

    /// Decodes and preprocesses one untrusted image under the guard's decode limits, pixel
    /// bounds and image-token budget.
    pub(crate) fn preprocess_image(
        &self,
        bytes: &[u8],
    ) -> Result<Preprocessed, safeguard_vision::VisionError> {
        decode_and_preprocess_within(
            bytes,
            &self.opts.limits,
            &self.preprocess,
            self.opts.max_image_tokens,
        )
    }

    /// The guard prompt layout requests are rendered with.
    pub fn template(&self) -> &Template {
        &self.opts.template
    }

    /// The checkpoint's own chat template, used by [`LocalGuard::chat`] (`None`: the built-in
    /// Qwen2.5-VL rendering).
    pub fn chat_template(&self) -> Option<&crate::chat_template::ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The checkpoint's `generation_config.json` (defaults when it has none).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Tokens that end generation: the chat template's `<|im_end|>` and `<|endoftext|>`, and
    /// the `eos_token_id`s of `generation_config.json`.
    pub(crate) fn stop_tokens(&self) -> Vec<u32> {
        let mut stop = self.answers.stop.to_vec();
        for &id in &self.generation.eos_token_id {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        stop
    }

    /// The model, for [`crate::chat`].
    pub(crate) fn model(&self) -> &safeguard_model::qwen2_5_vl::Qwen2_5VlModel {
        &self.loaded.model
    }

    /// The image preprocessing (pixel bounds already overridden), for [`crate::chat`].
    pub(crate) fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// The device the model runs on, for [`crate::chat`].
    pub(crate) fn device(&self) -> &candle_core::Device {
        &self.opts.load.device
    }
}

/// The token ids score mode compares for the answer words `safe` and `unsafe`: each word's only
/// token, or its first token when it takes several (`Unsafe` may be `Un` + `safe`), as long as
/// the two first tokens differ.
fn answer_pair(
    tokenizer: &QwenTokenizer,
    safe: &str,
    unsafe_: &str,
) -> Result<(u32, u32), EngineError> {
    let first = |word: &str| -> Result<u32, EngineError> {
        tokenizer
            .encode(word)?
            .first()
            .copied()
            .ok_or_else(|| EngineError::Input {
                reason: format!("answer word {word:?} encodes to no token"),
            })
    };
    let (s, u) = (first(safe)?, first(unsafe_)?);
    if s == u {
        return Err(EngineError::Input {
            reason: format!(
                "the answer words {safe:?} and {unsafe_:?} start with the same token ({s}): score \
                 mode cannot tell them apart; choose other words in the template"
            ),
        });
    }
    Ok((s, u))
}

/// Prohibited rules of `policy` named by the output: a category id (`O3`, `O3: Sexual
/// Content`), or a rule id written as a word in the rationale.
fn rules_named(policy: &Policy, categories: &[String], rationale: &Option<String>) -> Vec<String> {
    let words: Vec<String> = rationale
        .as_deref()
        .unwrap_or("")
        .split(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
        .map(|w| {
            w.trim_matches(|c| c == '.' || c == '/')
                .to_ascii_lowercase()
        })
        .collect();
    policy
        .prohibited()
        .filter(|rule| {
            let id = rule.id.to_ascii_lowercase();
            categories.iter().any(|c| {
                let c = c.trim().to_ascii_lowercase();
                c == id || c.split(':').next().is_some_and(|head| head.trim() == id)
            }) || words.contains(&id)
        })
        .map(|rule| rule.id.clone())
        .collect()
}

/// Finds, during generation, the step that writes the answer word and scores it.
struct AnswerScorer<'a> {
    tokenizer: &'a QwenTokenizer,
    format: Format,
    asked: &'a FormatTemplate,
    tokens: Vec<u32>,
    text_len: usize,
    p_unsafe: Option<f64>,
    done: bool,
}

impl<'a> AnswerScorer<'a> {
    fn new(tokenizer: &'a QwenTokenizer, format: Format, asked: &'a FormatTemplate) -> Self {
        Self {
            tokenizer,
            format,
            asked,
            tokens: Vec::new(),
            text_len: 0,
            p_unsafe: None,
            done: false,
        }
    }

    /// (safe word, unsafe word) of the template's format.
    fn words(&self) -> (&'a str, &'a str) {
        (&self.asked.safe, &self.asked.unsafe_)
    }

    fn step(&mut self, logits: &[f32], token: u32) {
        if self.done {
            return;
        }
        self.tokens.push(token);
        let Ok(text) = self.tokenizer.decode(&self.tokens, false) else {
            return;
        };
        let before = self.text_len;
        self.text_len = text.len();
        let Some(start) = answer_offset(&text, self.format) else {
            return;
        };
        if start >= text.len() || start < before {
            // Not written yet, or written by an earlier step that could not be scored.
            self.done = start < before;
            return;
        }
        self.done = true;
        // This step's token wrote the answer's first character.
        let Ok(piece) = self.tokenizer.decode(&[token], false) else {
            return;
        };
        let Some(raw) = self.tokenizer.token_str(token) else {
            return;
        };
        let written = &text[start..];
        let (safe, unsafe_) = self.words();
        let (chosen_word, other_word, chosen_unsafe) =
            if unsafe_.starts_with(written) || written.starts_with(unsafe_) {
                (unsafe_, safe, true)
            } else if safe.starts_with(written) || written.starts_with(safe) {
                (safe, unsafe_, false)
            } else {
                return;
            };
        // The part of the token before the answer (e.g. `>` of `>no`), in raw token form.
        let word_in_piece = piece.len().min(written.len());
        let head_len = raw.len().saturating_sub(word_in_piece);
        if !raw.is_char_boundary(head_len) || !chosen_word.starts_with(&raw[head_len..]) {
            return;
        }
        let other = format!("{}{other_word}", &raw[..head_len]);
        let Some(other_id) = self.tokenizer.token_id(&other) else {
            return;
        };
        let lp = log_softmax(&[logits[token as usize], logits[other_id as usize]]);
        let p_chosen = lp[0].exp();
        self.p_unsafe = Some(if chosen_unsafe {
            p_chosen
        } else {
            1.0 - p_chosen
        });
    }
}

/// Byte offset in `text` where the answer word starts, once the text has reached it.
fn answer_offset(text: &str, format: Format) -> Option<usize> {
    let after = |marker: &str| -> Option<usize> {
        let i = text.find(marker)? + marker.len();
        let rest = &text[i..];
        Some(i + (rest.len() - rest.trim_start().len()))
    };
    match format {
        Format::Verdict => {
            let trimmed = text.trim_start();
            (!trimmed.is_empty()).then(|| text.len() - trimmed.len())
        }
        Format::Reasoning => after("<answer>"),
        Format::Json => {
            let i = text.find("\"rating\"")? + "\"rating\"".len();
            let colon = text[i..].find(':')? + i + 1;
            let quote = text[colon..].find('"')? + colon + 1;
            Some(quote)
        }
    }
}

impl Guard for LocalGuard {
    fn name(&self) -> &str {
        NAME
    }

    /// Score-mode requests with no rule question to ask (a free-text policy, or `rules` off)
    /// run batched, grouped by policy prefix; the others one by one (each batching its own
    /// rule questions).
    fn judge(&self, requests: &[GuardRequest<'_>]) -> Vec<Result<Judgement, Error>> {
        let batchable = |r: &GuardRequest<'_>| {
            r.format == Format::Verdict
                && !(self.opts.rules && r.policy.prohibited().next().is_some())
        };
        let plain: Vec<&GuardRequest<'_>> = requests.iter().filter(|r| batchable(r)).collect();
        let mut batched = self.judge_score_batch(&plain).into_iter();
        requests
            .iter()
            .map(|r| {
                if batchable(r) {
                    batched.next().expect("one result per batched request")
                } else if r.format == Format::Verdict {
                    self.judge_score(r)
                } else {
                    self.judge_generate(r)
                }
            })
            .map(safeguard_core::guard::check_finite)
            .collect()
    }
}
