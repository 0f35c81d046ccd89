//! `generation_config.json`: the decoding defaults a checkpoint ships, honoured as Hugging Face
//! `generate()` and vLLM's OpenAI server honour them.
//!
//! - `eos_token_id` (an id or a list) ends generation, besides `<|im_end|>` and
//!   `<|endoftext|>` of the chat template.
//! - `temperature`, `top_p`, `top_k`, `repetition_penalty` are the defaults of every request
//!   that does not set them: in `/v1/chat/completions` as vLLM does (its
//!   `--generation-config auto`, the default), and in reason/json mode as `generate()` does
//!   (sampling only when `do_sample` is true, greedy otherwise; `repetition_penalty` applies
//!   in both cases).
//!
//! The released Qwen2.5-VL files say `do_sample: true, temperature ≈ 1e-6 (or 0.1), top_k 1,
//! top_p 0.001, repetition_penalty 1.05`: greedy decoding with a mild repetition penalty.
//!
//! A missing file means no defaults (greedy, no penalty, the template's stop tokens). Keys not
//! listed above are ignored.

use std::path::Path;

use serde::Deserialize;

use crate::EngineError;

/// The file's name.
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// What a checkpoint's `generation_config.json` says about decoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Extra end-of-sequence ids (may be empty).
    pub eos_token_id: Vec<u32>,
    /// Sample (true) or decode greedily (false, `generate()`'s default when absent).
    pub do_sample: Option<bool>,
    /// Softmax temperature (> 0).
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f64>,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: Option<usize>,
    /// HF's repetition penalty (> 0; 1 = off).
    pub repetition_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    do_sample: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    repetition_penalty: Option<f64>,
}

impl GenerationConfig {
    /// Reads `DIR/generation_config.json`; the defaults (nothing set) when it does not exist.
    pub fn from_model_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join(GENERATION_CONFIG);
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = crate::weights::read_to_string(&path)?;
        Self::from_json_str(&text).map_err(|e| match e {
            EngineError::Json { source, .. } => EngineError::Json { path, source },
            EngineError::Input { reason } => EngineError::Input {
                reason: format!("{}: {reason}", path.display()),
            },
            other => other,
        })
    }

    /// Parses the text of a `generation_config.json`, checking the ranges.
    pub fn from_json_str(text: &str) -> Result<Self, EngineError> {
        let raw: Raw = serde_json::from_str(text).map_err(|source| EngineError::Json {
            path: GENERATION_CONFIG.into(),
            source,
        })?;
        let cfg = Self {
            eos_token_id: match raw.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            do_sample: raw.do_sample,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            repetition_penalty: raw.repetition_penalty,
        };
        let bad = |reason: String| Err(EngineError::Input { reason });
        if cfg
            .temperature
            .is_some_and(|t| !(t.is_finite() && t >= 0.0))
        {
            return bad(format!("temperature {:?} must be ≥ 0", cfg.temperature));
        }
        if cfg.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return bad(format!("top_p {:?} must be in (0, 1]", cfg.top_p));
        }
        if cfg
            .repetition_penalty
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return bad(format!(
                "repetition_penalty {:?} must be > 0",
                cfg.repetition_penalty
            ));
        }
        Ok(cfg)
    }

    /// The decoding of `generate()` with these defaults: sampling with `temperature`, `top_p`,
    /// `top_k` when `do_sample` is true, greedy otherwise; `repetition_penalty` either way.
    /// Token budget, stop tokens and seed are the caller's.
    pub fn generate_defaults(&self) -> crate::sampling::SamplingParams {
        let sample = self.do_sample.unwrap_or(false);
        crate::sampling::SamplingParams {
            temperature: if sample {
                self.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_p: if sample {
                self.top_p.unwrap_or(1.0)
            } else {
                1.0
            },
            top_k: if sample { self.top_k.unwrap_or(0) } else { 0 },
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            ..crate::sampling::SamplingParams::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Qwen/Qwen2.5-VL-7B-Instruct`'s file (as carried into derived fine-tunes).
    const QWEN: &str = r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
        "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 1e-06,
        "top_p": 0.001, "top_k": 1, "transformers_version": "4.49.0.dev0"}"#;

    #[test]
    fn the_released_file_parses() {
        let cfg = GenerationConfig::from_json_str(QWEN).unwrap();
        assert_eq!(cfg.eos_token_id, vec![151645, 151643]);
        assert_eq!(cfg.repetition_penalty, Some(1.05));
        let p = cfg.generate_defaults();
        assert_eq!((p.top_k, p.repetition_penalty), (1, 1.05));
        let one = GenerationConfig::from_json_str(r#"{"eos_token_id": 7}"#).unwrap();
        assert_eq!(one.eos_token_id, vec![7]);
        // Without do_sample, generate() decodes greedily but still penalises.
        let greedy = GenerationConfig::from_json_str(
            r#"{"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.1}"#,
        )
        .unwrap()
        .generate_defaults();
        assert_eq!(
            (greedy.temperature, greedy.top_p, greedy.repetition_penalty),
            (0.0, 1.0, 1.1)
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for bad in [
            r#"{"temperature": -1}"#,
            r#"{"top_p": 0}"#,
            r#"{"repetition_penalty": 0}"#,
            r#"{"eos_token_id": "x"}"#,
        ] {
            assert!(GenerationConfig::from_json_str(bad).is_err(), "{bad}");
        }
    }
}
