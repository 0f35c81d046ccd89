//! Decoding: greedy or seeded sampling with temperature, top-k and top-p, stop tokens and a
//! token budget; the log-probability of every chosen token; and verdict scoring, P(unsafe)
//! from the logits of the two answer tokens.
//!
//! Log-probabilities are taken from the distribution the token was drawn from: the penalised
//! `logits / T` for sampling (before top-k/top-p truncation, as TRL and vLLM report them), the
//! penalised logits for greedy decoding.
//!
//! Penalties ([`TokenHistory`], [`Sampler::penalize`]) act on the logits before temperature,
//! in Hugging Face's order: `repetition_penalty` (HF and vLLM: every token of the prompt and of
//! the answer so far has its logit divided by the penalty when positive, multiplied when
//! negative), then `frequency_penalty` and `presence_penalty` (OpenAI and vLLM: on the
//! answer's tokens only, `logit − frequency · count − presence · [count > 0]`).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, Qwen2_5VlModel};

use crate::EngineError;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Stop right after producing one of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    /// RNG seed: the same seed and inputs give the same tokens.
    pub seed: u64,
    /// HF's repetition penalty (> 0; 1 = off).
    pub repetition_penalty: f64,
    /// OpenAI's frequency penalty, in [-2, 2] (0 = off).
    pub frequency_penalty: f64,
    /// OpenAI's presence penalty, in [-2, 2] (0 = off).
    pub presence_penalty: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            stop_tokens: Vec::new(),
            seed: 0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges (temperature ≥ 0, 0 < top_p ≤ 1).
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::Input {
                reason: format!("temperature {} must be ≥ 0", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::Input {
                reason: format!("top_p {} must be in (0, 1]", self.top_p),
            });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(EngineError::Input {
                reason: format!("repetition_penalty {} must be > 0", self.repetition_penalty),
            });
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(EngineError::Input {
                    reason: format!("{name} {v} must be in [-2, 2]"),
                });
            }
        }
        Ok(())
    }
}

/// One chosen token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Its natural-log probability (see the module docs).
    pub logprob: f32,
}

/// The tokens a penalty looks at: those of the prompt and those generated so far.
#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    /// Distinct ids of prompt and answer, in first-seen order.
    seen: Vec<u32>,
    seen_set: std::collections::HashSet<u32>,
    /// How often each id occurs in the answer.
    answer_counts: std::collections::HashMap<u32, u32>,
}

impl TokenHistory {
    /// The history after the prompt `prompt`.
    pub fn new(prompt: &[u32]) -> Self {
        let mut h = Self::default();
        for &id in prompt {
            h.see(id);
        }
        h
    }

    fn see(&mut self, id: u32) {
        if self.seen_set.insert(id) {
            self.seen.push(id);
        }
    }

    /// Records a generated token.
    pub fn push(&mut self, id: u32) {
        self.see(id);
        *self.answer_counts.entry(id).or_insert(0) += 1;
    }
}

/// Picks tokens from logits according to [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

/// `log softmax(logits)` in f64 for stability.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Applies the penalties of the parameters to `logits` (`[vocab]`) in place, given what
    /// came before (see the module docs). Ids outside the vocabulary are skipped.
    pub fn penalize(&self, logits: &mut [f32], history: &TokenHistory) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let penalty = p.repetition_penalty as f32;
            for &id in &history.seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &count) in &history.answer_counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    let by = p.frequency_penalty * f64::from(count) + p.presence_penalty;
                    *l = (f64::from(*l) - by) as f32;
                }
            }
        }
    }

    /// Chooses the next token from `logits` (`[vocab]`). A NaN or `+inf` logit, or a row
    /// without any finite logit, is [`EngineError::NonFinite`]: argmax and sampling would
    /// otherwise pick an arbitrary token and carry on.
    pub fn sample(&mut self, logits: &[f32]) -> Result<Sampled, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::Input {
                reason: "empty logits".into(),
            });
        }
        check_logits(logits)?;
        if self.params.temperature == 0.0 {
            let token = argmax(logits);
            let logprob = log_softmax(logits)[token] as f32;
            return Ok(Sampled {
                token: token as u32,
                logprob,
            });
        }
        let scaled: Vec<f32> = logits
            .iter()
            .map(|&l| (l as f64 / self.params.temperature) as f32)
            .collect();
        let logprobs = log_softmax(&scaled);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
        let mut keep = order.len();
        if self.params.top_k > 0 {
            keep = keep.min(self.params.top_k);
        }
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, &i) in order.iter().enumerate().take(keep) {
                mass += logprobs[i].exp();
                if mass >= self.params.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept = &order[..keep];
        let total: f64 = kept.iter().map(|&i| logprobs[i].exp()).sum();
        let mut draw = self.rng.random::<f64>() * total;
        let mut token = kept[keep - 1];
        for &i in kept {
            draw -= logprobs[i].exp();
            if draw <= 0.0 {
                token = i;
                break;
            }
        }
        Ok(Sampled {
            token: token as u32,
            logprob: logprobs[token] as f32,
        })
    }
}

/// Fails on the first NaN or `+inf` logit, or when every logit is `-inf` (`-inf` alone is a
/// masked token and fine).
pub fn check_logits(logits: &[f32]) -> Result<(), EngineError> {
    if let Some((i, l)) = logits
        .iter()
        .enumerate()
        .find(|(_, l)| l.is_nan() || **l == f32::INFINITY)
    {
        return Err(EngineError::NonFinite {
            what: format!("logit of token {i}"),
            value: l.to_string(),
        });
    }
    if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
        return Err(EngineError::NonFinite {
            what: "every logit".into(),
            value: f32::NEG_INFINITY.to_string(),
        });
    }
    Ok(())
}

fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` reached.
    MaxTokens,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids (including a final stop token).
    pub tokens: Vec<u32>,
    /// Log-probability of each new token.
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub stop: StopReason,
}

/// Generates from `prompt` with a fresh KV cache (prefill, then one token per step).
pub fn generate(
    model: &Qwen2_5VlModel,
    prompt: &Prompt<'_>,
    params: &SamplingParams,
) -> Result<Generation, EngineError> {
    generate_with(model, prompt, params, KvCache::new(), |_, _| {})
}

/// [`generate`] continuing from `cache`, which holds the keys/values of a prefix of
/// `prompt.input_ids` (a cached policy prefix; empty for a fresh start). `on_step` sees every
/// step's logits (`[vocab]`, f32, after the penalties: the distribution the token was chosen
/// from) and the token chosen from them, before the next step runs.
pub fn generate_with(
    model: &Qwen2_5VlModel,
    prompt: &Prompt<'_>,
    params: &SamplingParams,
    mut cache: KvCache,
    mut on_step: impl FnMut(&[f32], Sampled),
) -> Result<Generation, EngineError> {
    let mut sampler = Sampler::new(params.clone())?;
    let mut ids = prompt.input_ids.to_vec();
    let mut history = TokenHistory::new(&ids);
    let mut out = Generation {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        stop: StopReason::MaxTokens,
    };
    if params.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut logits = model.forward(prompt, &mut cache, Logits::Last)?;
    loop {
        let mut step_logits = logits.to_vec1::<f32>()?;
        // `sample` refuses NaN/+inf logits, which the penalties keep as they are.
        sampler.penalize(&mut step_logits, &history);
        let chosen = sampler.sample(&step_logits)?;
        on_step(&step_logits, chosen);
        history.push(chosen.token);
        out.tokens.push(chosen.token);
        out.logprobs.push(chosen.logprob);
        if params.stop_tokens.contains(&chosen.token) {
            out.stop = StopReason::StopToken;
            break;
        }
        if out.tokens.len() >= params.max_new_tokens {
            break;
        }
        ids.push(chosen.token);
        let step = Prompt {
            input_ids: &ids,
            ..*prompt
        };
        logits = model.forward(&step, &mut cache, Logits::Last)?;
    }
    Ok(out)
}

/// P(unsafe) from next-token logits: the softmax over the logits of the two answer tokens
/// only, `exp(l_unsafe) / (exp(l_unsafe) + exp(l_safe))`. A non-finite answer logit is
/// [`EngineError::NonFinite`] (an infinite one would give a confident 0 or 1, a NaN a score
/// below every threshold).
pub fn p_unsafe(logits: &Tensor, unsafe_token: u32, safe_token: u32) -> Result<f64, EngineError> {
    let vocab = logits.dim(0)?;
    for t in [unsafe_token, safe_token] {
        if t as usize >= vocab {
            return Err(EngineError::Input {
                reason: format!("answer token {t} is outside the vocabulary ({vocab})"),
            });
        }
    }
    let u = logits
        .get(unsafe_token as usize)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let s = logits
        .get(safe_token as usize)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    for (token, logit) in [(unsafe_token, u), (safe_token, s)] {
        if !logit.is_finite() {
            return Err(EngineError::NonFinite {
                what: format!("logit of answer token {token}"),
                value: logit.to_string(),
            });
        }
    }
    Ok(1.0 / (1.0 + (s - u).exp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn greedy_takes_argmax_with_its_logprob() {
        let s = sampler(0.0, 0, 1.0, 0).sample(&[0.0, 2.0, 1.0]).unwrap();
        assert_eq!(s.token, 1);
        let expected = 2.0 - (1f64 + 2f64.exp() + 1f64.exp()).ln();
        assert!((s.logprob as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_even_when_sampling() {
        let mut s = sampler(1.5, 1, 1.0, 7);
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 0.5, 3.0, 1.0]).unwrap().token, 2);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.84, 0.11, 0.04, 0.01]: top_p 0.8 keeps token 0 only.
        let mut s = sampler(1.0, 0, 0.8, 3);
        for _ in 0..50 {
            assert_eq!(s.sample(&[4.0, 2.0, 1.0, -0.5]).unwrap().token, 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_probabilities() {
        let logits = [0.0f32, (3f32).ln()]; // p = [0.25, 0.75]
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 1.0, seed);
            (0..4000)
                .map(|_| s.sample(&logits).unwrap().token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        let ones = draw(11).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn repetition_penalty_is_hf_s_and_frequency_counts_the_answer_only() {
        let s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        let mut logits = vec![4.0, -4.0, 4.0, -4.0];
        let mut history = TokenHistory::new(&[0, 1, 1]);
        s.penalize(&mut logits, &history);
        // Positive logits are divided, negative ones multiplied; each id once.
        assert_eq!(logits, [2.0, -8.0, 4.0, -4.0]);
        history.push(3);
        let f = Sampler::new(SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 1.0,
            ..Default::default()
        })
        .unwrap();
        history.push(3);
        let mut logits = vec![1.0; 4];
        f.penalize(&mut logits, &history);
        // Prompt tokens 0 and 1 are not penalised; token 3 twice in the answer: 1 − 2·0.5 − 1.
        assert_eq!(logits, [1.0, 1.0, 1.0, -1.0]);
        assert!(Sampler::new(SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            presence_penalty: 2.5,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn non_finite_logits_are_errors_not_tokens() {
        let mut s = sampler(0.0, 0, 1.0, 0);
        for bad in [
            vec![0.0, f32::NAN, 1.0],
            vec![f32::INFINITY, 0.0],
            vec![f32::NEG_INFINITY, f32::NEG_INFINITY],
        ] {
            assert!(
                matches!(s.sample(&bad), Err(EngineError::NonFinite { .. })),
                "{bad:?}"
            );
        }
        // A masked token alone is fine.
        assert_eq!(s.sample(&[f32::NEG_INFINITY, 1.0]).unwrap().token, 1);
        let mut t = sampler(1.0, 0, 0.9, 0);
        assert!(t.sample(&[0.0, f32::NAN]).is_err());
        let nan = Tensor::new(&[0.0f32, f32::NAN, 1.0], &candle_core::Device::Cpu).unwrap();
        assert!(matches!(
            p_unsafe(&nan, 1, 2),
            Err(EngineError::NonFinite { .. })
        ));
        let inf = Tensor::new(&[0.0f32, f32::INFINITY, 1.0], &candle_core::Device::Cpu).unwrap();
        assert!(p_unsafe(&inf, 1, 2).is_err());
    }

    #[test]
    fn p_unsafe_is_a_two_way_softmax() {
        let logits = Tensor::new(&[0.0f32, 1.0, 3.0], &candle_core::Device::Cpu).unwrap();
        let p = p_unsafe(&logits, 2, 1).unwrap();
        assert!((p - 1.0 / (1.0 + (-2f64).exp())).abs() < 1e-9);
        assert!(p_unsafe(&logits, 5, 1).is_err());
    }
}
