//! Chat on the local model: [`LocalGuard::chat`] runs a multimodal conversation
//! ([`ChatRequest`]: messages of text and image parts, sampling parameters, stop strings) through
//! the Qwen2.5-VL chat template and generates the assistant's answer, reporting each new piece of
//! text as it is decoded (for streaming).
//!
//! The prompt is the checkpoint's own chat template ([`crate::chat_template`]) when it ships one,
//! else [`render_chat`] (the stock Qwen2.5-VL template), with every image part expanded to its
//! `<|image_pad|>` tokens, tokenized as one text, exactly as the Python processor builds it
//! ([`LocalGuard::prepare_chat`] exposes it). Images go through the guard's own decode limits and
//! preprocessing (and image-token budget) and the vision tower, one image at a time.
//!
//! Generation stops at `<|im_end|>`/`<|endoftext|>` or an `eos_token_id` of the checkpoint's
//! `generation_config.json` (not part of the text), at the first
//! occurrence of a stop string in the decoded text (cut before it), or after `max_tokens` new
//! tokens. Streamed pieces never contain a stop string nor half of a UTF-8 character: text that
//! could still become the start of a stop string is held back until it cannot. The streamed
//! pieces concatenate to [`ChatOutput::text`].
//!
//! With [`ChatRequest::logprobs`] set, every answer token comes with its log-probability and the
//! most likely alternatives ([`TokenLogprob`]), as OpenAI's `logprobs`/`top_logprobs`: the
//! log-softmax of the model's raw next-token logits (before temperature and top-p, as vLLM's
//! default), so a guard prompted through chat is scored exactly as the local score mode scores
//! it. A stop token is not part of the answer and has no entry; each streamed piece carries the
//! entries of the tokens decoded since the previous piece ([`ChatDelta`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};
use safeguard_vision::VisionError;

use crate::sampling::{Sampler, SamplingParams, TokenHistory};
pub use crate::tokenizer::Role;
use crate::tokenizer::{render_chat, Message, Part, IMAGE_PAD, VISION_END, VISION_START};
use crate::{EngineError, LocalGuard};

/// Most stop strings a request may give (as OpenAI: 4).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most alternatives per token in [`ChatRequest::logprobs`] (as OpenAI and vLLM's default: 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One part of a chat message.
#[derive(Clone, PartialEq, Eq)]
pub enum ChatPart {
    /// Text, inserted verbatim.
    Text(String),
    /// An encoded image (JPEG, PNG, WebP, GIF, BMP or TIFF), checked against the guard's
    /// decode limits.
    Image(Vec<u8>),
}

/// Never prints image bytes (they may reach logs).
impl fmt::Debug for ChatPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatPart::Text(text) => f.debug_tuple("Text").field(text).finish(),
            ChatPart::Image(bytes) => write!(f, "Image(<{} bytes>)", bytes.len()),
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Content, in order.
    pub parts: Vec<ChatPart>,
}

impl ChatMessage {
    /// A message made of one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            parts: vec![ChatPart::Text(text.into())],
        }
    }
}

/// A conversation to continue, and how to sample the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation; the answer follows its last message. At least one.
    pub messages: Vec<ChatMessage>,
    /// Most new tokens (the stop token included).
    pub max_tokens: usize,
    /// 0 = greedy; otherwise logits are divided by it (≥ 0, finite). `None`: the checkpoint's
    /// `generation_config.json` value, else 1 (as vLLM).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1] (1 = off). `None`: generation_config's, else 1.
    pub top_p: Option<f64>,
    /// Keep the `k` most likely tokens (0 = off). `None`: generation_config's, else off.
    pub top_k: Option<usize>,
    /// HF's repetition penalty (> 0, 1 = off), over prompt and answer. `None`:
    /// generation_config's, else off.
    pub repetition_penalty: Option<f64>,
    /// OpenAI's frequency penalty in [-2, 2], over the answer's tokens (0 = off).
    pub frequency_penalty: f64,
    /// OpenAI's presence penalty in [-2, 2], over the answer's tokens (0 = off).
    pub presence_penalty: f64,
    /// RNG seed: the same seed and request give the same answer.
    pub seed: u64,
    /// Stop strings (at most [`MAX_STOP_STRINGS`], none empty): the answer ends before the
    /// first occurrence of any of them.
    pub stop: Vec<String>,
    /// `None`: no log-probabilities. `Some(k)`: each answer token's log-probability and its `k`
    /// most likely alternatives (`k` ≤ [`MAX_TOP_LOGPROBS`]; 0 = the chosen token's only).
    pub logprobs: Option<usize>,
}

impl Default for ChatRequest {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            max_tokens: 256,
            temperature: Some(0.0),
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The OpenAI name: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The answer to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    /// The answer, without the stop token and cut before a stop string.
    pub text: String,
    /// Every generated token id, a final stop token included.
    pub completion_ids: Vec<u32>,
    /// Tokens of the prompt (image pads included).
    pub prompt_tokens: usize,
    /// Tokens generated (`completion_ids.len()`).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// One entry per answer token (the stop token excluded) when [`ChatRequest::logprobs`] was
    /// set, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

/// One candidate token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// The token as text (lossy where it holds part of a UTF-8 character).
    pub token: String,
    /// The token's exact bytes.
    pub bytes: Vec<u8>,
    /// Natural-log probability under the raw logits.
    pub logprob: f64,
}

/// The log-probability of one generated token and of its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub chosen: TopLogprob,
    /// The most likely tokens at this position, most likely first (ties: smaller id first);
    /// [`ChatRequest::logprobs`] of them.
    pub top: Vec<TopLogprob>,
}

/// A piece of a streamed answer: new text and the log-probabilities of the tokens decoded since
/// the previous piece (empty unless asked for). Either may be empty, not both.
#[derive(Debug, Clone, Copy)]
pub struct ChatDelta<'a> {
    /// New text.
    pub text: &'a str,
    /// New entries of [`ChatOutput::logprobs`].
    pub logprobs: &'a [TokenLogprob],
}

/// What can go wrong in [`LocalGuard::chat`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// An image part could not be decoded or is over the limits (`index` counts the image
    /// parts of the whole conversation from 0).
    #[error("image {index}: {source}")]
    Image {
        /// Which image.
        index: usize,
        /// The cause.
        #[source]
        source: VisionError,
    },
    /// The request is invalid: no messages, a sampling parameter out of range, bad stop
    /// strings, or text that contains image placeholder tokens.
    #[error("invalid chat request: {reason}")]
    Invalid {
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// The caller's cancel flag was set before the answer was complete.
    #[error("cancelled")]
    Cancelled,
    /// Tokenizing or running the model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<candle_core::Error> for ChatError {
    fn from(e: candle_core::Error) -> Self {
        ChatError::Engine(e.into())
    }
}

impl From<safeguard_model::ModelError> for ChatError {
    fn from(e: safeguard_model::ModelError) -> Self {
        ChatError::Engine(e.into())
    }
}

/// A chat prompt ready to run: its text, token ids and image embeddings.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    /// The rendered chat template, image pads expanded, ending with
    /// `<|im_start|>assistant\n`.
    pub text: String,
    /// Its token ids.
    pub input_ids: Vec<u32>,
    /// `[t, h, w]` in patches of every image, in order.
    pub grids: Vec<[usize; 3]>,
    /// All images' embeddings, concatenated (`None` without images).
    embeds: Option<Tensor>,
}

/// Checks what the model does not check itself.
fn validate(req: &ChatRequest) -> Result<(), ChatError> {
    let invalid = |reason: String| Err(ChatError::Invalid { reason });
    if req.messages.is_empty() {
        return invalid("no messages: give at least one".into());
    }
    if let Some(t) = req.temperature.filter(|t| !(t.is_finite() && *t >= 0.0)) {
        return invalid(format!("temperature {t} must be ≥ 0"));
    }
    if let Some(p) = req.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return invalid(format!("top_p {p} must be in (0, 1]"));
    }
    if let Some(r) = req
        .repetition_penalty
        .filter(|r| !(r.is_finite() && *r > 0.0))
    {
        return invalid(format!("repetition_penalty {r} must be > 0"));
    }
    for (name, v) in [
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return invalid(format!("{name} {v} must be in [-2, 2]"));
        }
    }
    if req.stop.len() > MAX_STOP_STRINGS {
        return invalid(format!(
            "{} stop strings given, at most {MAX_STOP_STRINGS} allowed",
            req.stop.len()
        ));
    }
    if req.stop.iter().any(String::is_empty) {
        return invalid("a stop string is empty".into());
    }
    if req.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return invalid(format!(
            "{} top logprobs asked for, at most {MAX_TOP_LOGPROBS} allowed",
            req.logprobs.unwrap_or_default()
        ));
    }
    for message in &req.messages {
        for part in &message.parts {
            if let ChatPart::Text(text) = part {
                for marker in [IMAGE_PAD, VISION_START, VISION_END, "<|video_pad|>"] {
                    if text.contains(marker) {
                        return invalid(format!(
                            "text contains the image placeholder {marker}: send images as image parts"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl LocalGuard {
    /// Decodes and embeds the images of `req` and renders and tokenizes its prompt.
    pub fn prepare_chat(&self, req: &ChatRequest) -> Result<PreparedChat, ChatError> {
        validate(req)?;
        let model = self.model();
        let preprocess = self.preprocess_config();
        let mut grids = Vec::new();
        let mut embeds = Vec::new();
        let mut messages = Vec::with_capacity(req.messages.len());
        for message in &req.messages {
            let mut parts = Vec::with_capacity(message.parts.len());
            for part in &message.parts {
                match part {
                    ChatPart::Text(text) => parts.push(Part::Text(text.clone())),
                    ChatPart::Image(bytes) => {
                        let index = grids.len();
                        let pre = self
                            .preprocess_image(bytes)
                            .map_err(|source| ChatError::Image { index, source })?;
                        let dim = preprocess.patch_dim();
                        let rows = pre.pixel_values.len() / dim;
                        let pixel_values =
                            Tensor::from_vec(pre.pixel_values, (rows, dim), self.device())?;
                        embeds.push(model.embed_images(&VisionInputs {
                            pixel_values,
                            grid_thw: vec![pre.grid_thw],
                        })?);
                        parts.push(Part::Image {
                            tokens: model.image_tokens(pre.grid_thw),
                        });
                        grids.push(pre.grid_thw);
                    }
                }
            }
            messages.push(Message {
                role: message.role,
                parts,
            });
        }
        let text = match self.chat_template() {
            Some(template) => template.render(&messages, true)?,
            None => render_chat(&messages, true),
        };
        let input_ids = self.tokenizer().encode(&text)?;
        let embeds = match embeds.len() {
            0 => None,
            1 => embeds.pop(),
            _ => Some(Tensor::cat(&embeds, 0)?),
        };
        Ok(PreparedChat {
            text,
            input_ids,
            grids,
            embeds,
        })
    }

    /// Answers the conversation of `req` (see the module docs). `on_delta` receives each new
    /// piece of the answer's text as soon as it is final, with its tokens' log-probabilities;
    /// the pieces concatenate to [`ChatOutput::text`] and their log-probabilities to
    /// [`ChatOutput::logprobs`]. Blocking: runs the whole generation on the calling thread.
    pub fn chat(
        &self,
        req: &ChatRequest,
        on_delta: impl FnMut(ChatDelta<'_>),
    ) -> Result<ChatOutput, ChatError> {
        self.chat_until(req, &AtomicBool::new(false), on_delta)
    }

    /// [`LocalGuard::chat`] that gives up with [`ChatError::Cancelled`] once `cancel` is set
    /// (checked before each decoding step; a client that went away).
    pub fn chat_until(
        &self,
        req: &ChatRequest,
        cancel: &AtomicBool,
        on_delta: impl FnMut(ChatDelta<'_>),
    ) -> Result<ChatOutput, ChatError> {
        let prepared = self.prepare_chat(req)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(ChatError::Cancelled);
        }
        self.chat_prepared(&prepared, req, cancel, on_delta)
    }

    /// [`LocalGuard::chat_until`] on an already prepared prompt (sampling parameters and stop
    /// strings are read from `req`, its messages are not looked at again).
    pub fn chat_prepared(
        &self,
        prepared: &PreparedChat,
        req: &ChatRequest,
        cancel: &AtomicBool,
        mut on_delta: impl FnMut(ChatDelta<'_>),
    ) -> Result<ChatOutput, ChatError> {
        validate(req)?;
        let stop_ids = self.stop_tokens();
        let defaults = self.generation_config();
        let mut sampler = Sampler::new(SamplingParams {
            temperature: req.temperature.or(defaults.temperature).unwrap_or(1.0),
            top_p: req.top_p.or(defaults.top_p).unwrap_or(1.0),
            top_k: req.top_k.or(defaults.top_k).unwrap_or(0),
            max_new_tokens: req.max_tokens,
            stop_tokens: stop_ids.clone(),
            seed: req.seed,
            repetition_penalty: req
                .repetition_penalty
                .or(defaults.repetition_penalty)
                .unwrap_or(1.0),
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
        })?;
        let mut history = TokenHistory::new(&prepared.input_ids);
        let mut out = ChatOutput {
            text: String::new(),
            completion_ids: Vec::new(),
            prompt_tokens: prepared.input_ids.len(),
            completion_tokens: 0,
            finish_reason: FinishReason::Length,
            logprobs: Vec::new(),
        };
        if req.max_tokens == 0 {
            return Ok(out);
        }
        let model = self.model();
        let mut ids = prepared.input_ids.clone();
        let base = Prompt {
            input_ids: &prepared.input_ids,
            grids: &prepared.grids,
            image_embeds: prepared.embeds.as_ref(),
        };
        let mut cache = KvCache::new();
        let mut logits = model.forward(&base, &mut cache, Logits::Last)?;
        let mut text = TextStream::new(&req.stop);
        let mut answer = Vec::new();
        // Log-probabilities not yet handed out with a piece (from `sent` on).
        let mut sent = 0;
        let mut deliver = |piece: &str, logprobs: &[TokenLogprob], sent: &mut usize| {
            if !piece.is_empty() || logprobs.len() > *sent {
                on_delta(ChatDelta {
                    text: piece,
                    logprobs: &logprobs[*sent..],
                });
                *sent = logprobs.len();
            }
        };
        loop {
            let mut row = logits.to_vec1::<f32>()?;
            // The raw distribution is kept only for the log-probabilities (reported before
            // penalties, as vLLM does). `sample` refuses a NaN or +inf logit, which the
            // penalties keep as they are.
            let raw = req.logprobs.map(|_| row.clone());
            sampler.penalize(&mut row, &history);
            let chosen = sampler.sample(&row)?;
            history.push(chosen.token);
            out.completion_ids.push(chosen.token);
            if stop_ids.contains(&chosen.token) {
                out.finish_reason = FinishReason::Stop;
                break;
            }
            if let (Some(k), Some(raw)) = (req.logprobs, &raw) {
                out.logprobs.push(self.token_logprob(raw, chosen.token, k));
            }
            answer.push(chosen.token);
            let decoded = self.tokenizer().decode(&answer, true)?;
            let mut piece = String::new();
            let stopped = text.push(&decoded, &mut |p| piece.push_str(p));
            deliver(&piece, &out.logprobs, &mut sent);
            if stopped {
                out.finish_reason = FinishReason::Stop;
                break;
            }
            if out.completion_ids.len() >= req.max_tokens {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(ChatError::Cancelled);
            }
            ids.push(chosen.token);
            let step = Prompt {
                input_ids: &ids,
                ..base
            };
            logits = model.forward(&step, &mut cache, Logits::Last)?;
        }
        let mut piece = String::new();
        out.text = text.finish(&mut |p| piece.push_str(p));
        deliver(&piece, &out.logprobs, &mut sent);
        out.completion_tokens = out.completion_ids.len();
        Ok(out)
    }

    /// The log-softmax of `logits` (computed in f64) at `chosen` and at the `k` most likely ids.
    fn token_logprob(&self, logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
        let max = logits
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        let log_z = max + sum.ln();
        let entry = |id: u32| {
            let logprob = logits
                .get(id as usize)
                .map_or(f64::NEG_INFINITY, |&x| x as f64 - log_z);
            let token = self.tokenizer().decode(&[id], false).unwrap_or_default();
            let bytes = self
                .tokenizer()
                .token_bytes(id)
                .unwrap_or_else(|| token.clone().into_bytes());
            TopLogprob {
                id,
                token,
                bytes,
                logprob,
            }
        };
        let mut top = Vec::new();
        if k > 0 {
            // Most likely first, NaN last, ties by smaller id.
            let order = |a: &u32, b: &u32| {
                let (x, y) = (logits[*a as usize], logits[*b as usize]);
                x.is_nan()
                    .cmp(&y.is_nan())
                    .then(y.total_cmp(&x))
                    .then(a.cmp(b))
            };
            let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
            let k = k.min(ids.len());
            if k < ids.len() {
                ids.select_nth_unstable_by(k - 1, order);
                ids.truncate(k);
            }
            ids.sort_unstable_by(order);
            top = ids.into_iter().map(entry).collect();
        }
        TokenLogprob {
            chosen: entry(chosen),
            top,
        }
    }
}

/// Turns the decoded text of a growing answer into final pieces: cut at stop strings, hold back
/// a possible start of a stop string and a trailing incomplete UTF-8 character.
#[derive(Debug)]
struct TextStream<'a> {
    stop: &'a [String],
    /// What was handed out so far.
    emitted: String,
    /// The latest decoded text.
    latest: String,
}

impl<'a> TextStream<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            emitted: String::new(),
            latest: String::new(),
        }
    }

    /// Takes the whole decoded answer so far; emits what became final. Returns true when a stop
    /// string appeared (the text is then cut before it and complete).
    fn push(&mut self, decoded: &str, on_token: &mut impl FnMut(&str)) -> bool {
        self.latest = decoded.to_string();
        let cut = self
            .stop
            .iter()
            .filter_map(|s| decoded.find(s.as_str()))
            .min();
        if let Some(cut) = cut {
            self.latest.truncate(cut);
            self.emit(self.latest.len(), on_token);
            return true;
        }
        let mut end = decoded.len();
        // An incomplete character decodes as U+FFFD until its last byte arrives.
        while decoded[..end].ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        // The longest tail that a stop string begins with.
        let hold = self
            .stop
            .iter()
            .flat_map(|s| {
                let tail = &decoded[..end];
                (1..s.len().min(tail.len() + 1))
                    .filter(|&n| tail.is_char_boundary(tail.len() - n))
                    .filter(move |&n| s.starts_with(&tail[tail.len() - n..]))
            })
            .max()
            .unwrap_or(0);
        self.emit(end - hold, on_token);
        false
    }

    /// Emits `latest[emitted..end]` if the text so far still extends what was emitted.
    fn emit(&mut self, end: usize, on_token: &mut impl FnMut(&str)) {
        let start = self.emitted.len();
        if end <= start
            || !self.latest.is_char_boundary(end)
            || !self.latest.starts_with(self.emitted.as_str())
        {
            return;
        }
        let piece = &self.latest[start..end];
        on_token(piece);
        self.emitted.push_str(piece);
    }

    /// Emits what is left and returns the whole answer.
    fn finish(mut self, on_token: &mut impl FnMut(&str)) -> String {
        let end = self.latest.len();
        self.emit(end, on_token);
        // If the decoded text ever changed behind what was streamed (not seen with byte-level
        // BPE), the streamed text is what the client has, so it stays the answer.
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], steps: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stop);
        let mut pieces = Vec::new();
        let mut stopped = false;
        for step in steps {
            if stream.push(step, &mut |p| pieces.push(p.to_string())) {
                stopped = true;
                break;
            }
        }
        let text = stream.finish(&mut |p| pieces.push(p.to_string()));
        (pieces, text, stopped)
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        let (pieces, text, stopped) = run(&[], &["a", "ab", "abc d"]);
        assert_eq!(pieces, ["a", "b", "c d"]);
        assert_eq!(text, "abc d");
        assert!(!stopped);
    }

    #[test]
    fn stop_strings_cut_and_are_never_streamed() {
        let (pieces, text, stopped) = run(&["END"], &["x", "xE", "xEN", "xENDy"]);
        assert_eq!(text, "x");
        assert_eq!(pieces.concat(), "x");
        assert!(stopped);
        // A held-back prefix that does not become the stop string is released.
        let (pieces, text, stopped) = run(&["END"], &["xE", "xEa"]);
        assert_eq!(
            (pieces.concat(), text.as_str(), stopped),
            ("xEa".into(), "xEa", false)
        );
        assert_eq!(pieces, ["x", "Ea"]);
    }

    #[test]
    fn incomplete_characters_are_held_back() {
        let (pieces, text, _) = run(&[], &["a\u{FFFD}", "aé"]);
        assert_eq!(pieces, ["a", "é"]);
        assert_eq!(text, "aé");
    }

    #[test]
    fn earliest_stop_string_wins() {
        let (_, text, stopped) = run(&["cd", "b"], &["abcd"]);
        assert_eq!(text, "a");
        assert!(stopped);
    }

    #[test]
    fn image_bytes_are_not_printed() {
        let part = ChatPart::Image(vec![1, 2, 3]);
        assert_eq!(format!("{part:?}"), "Image(<3 bytes>)");
    }

    #[test]
    fn invalid_requests_are_refused() {
        let ok = ChatRequest {
            messages: vec![ChatMessage::text(Role::User, "hi")],
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        for bad in [
            ChatRequest::default(),
            ChatRequest {
                temperature: Some(f64::NAN),
                ..ok.clone()
            },
            ChatRequest {
                top_p: Some(0.0),
                ..ok.clone()
            },
            ChatRequest {
                repetition_penalty: Some(0.0),
                ..ok.clone()
            },
            ChatRequest {
                presence_penalty: -3.0,
                ..ok.clone()
            },
            ChatRequest {
                stop: vec![String::new()],
                ..ok.clone()
            },
            ChatRequest {
                stop: vec!["a".into(); 5],
                ..ok.clone()
            },
            ChatRequest {
                messages: vec![ChatMessage::text(Role::User, "x<|image_pad|>")],
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(validate(&bad), Err(ChatError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
