//! [`RemoteGuard`]: turns guard requests into chat completions and their answers into
//! judgements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use base64::Engine as _;
use safeguard_core::guard::{Guard, GuardRequest, Judgement, RuleResult, RuleStatus};
use safeguard_core::prompt::{rule_question, Format};
use safeguard_core::verdict::{self, Verdict};
use safeguard_core::{Assessment, Error, Stance};

use crate::client::Client;
use crate::config::RemoteConfig;
use crate::mime::sniff_mime;
use crate::score::score_from_logprobs;
use crate::wire::{chat_pieces, request_body, ChatPieces, ChatResponse, Mode};
use crate::NAME;

/// A [`Guard`] backed by OpenAI-compatible chat-completions endpoints. See the crate docs.
#[derive(Debug)]
pub struct RemoteGuard {
    cfg: RemoteConfig,
    client: Client,
}

/// One chat completion to make: the whole-policy question or one rule's.
struct Call {
    /// Index of the request in the batch.
    request: usize,
    /// `None` for the whole-policy question, else the index of the rule in `policy.rules`.
    rule: Option<usize>,
    pieces: ChatPieces,
}

/// What came back for one call, and when.
struct Outcome {
    result: Result<ChatResponse, Error>,
    started: Instant,
    finished: Instant,
}

/// A verdict read in score mode.
enum Reading {
    /// From logprobs.
    Scored { p_unsafe: f64, note: Option<String> },
    /// From the text, when the logprobs could not give a score.
    Parsed { verdict: Verdict, note: String },
}

impl RemoteGuard {
    /// Validates `cfg` (at least one http(s) endpoint without credentials in the URL, a
    /// model name, a timeout above zero, concurrency of at least 1) and builds the client.
    /// Nothing is sent until [`Guard::judge`].
    pub fn new(cfg: RemoteConfig) -> Result<Self, Error> {
        let client = Client::new(&cfg)?;
        Ok(RemoteGuard { cfg, client })
    }

    /// The configuration this guard was built with.
    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    fn mode(&self, format: Format) -> Mode {
        match format {
            Format::Verdict => Mode::Score,
            Format::Reasoning | Format::Json => Mode::Generate {
                max_tokens: self.cfg.max_tokens_reason,
            },
        }
    }

    /// The calls for one request: the whole-policy question, plus one per prohibited rule in
    /// score mode.
    fn plan(&self, index: usize, request: &GuardRequest<'_>) -> Result<Vec<Call>, Error> {
        let mut calls = vec![Call {
            request: index,
            rule: None,
            pieces: chat_pieces(request.policy, request.format, None)?,
        }];
        if request.format == Format::Verdict {
            for (rule_index, rule) in request.policy.rules.iter().enumerate() {
                if rule.stance == Stance::Prohibited {
                    let question = rule_question(rule);
                    calls.push(Call {
                        request: index,
                        rule: Some(rule_index),
                        pieces: chat_pieces(request.policy, request.format, Some(&question))?,
                    });
                }
            }
        }
        Ok(calls)
    }

    /// Makes every call, `concurrency` at a time; outcomes in the order of `calls`.
    fn run(
        &self,
        calls: &[Call],
        requests: &[GuardRequest<'_>],
        data_urls: &[Option<String>],
    ) -> Vec<Outcome> {
        let next = AtomicUsize::new(0);
        let workers = self.cfg.concurrency.min(calls.len());
        let mut outcomes: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(call) = calls.get(i) else { break };
                            let data_url = data_urls[call.request]
                                .as_deref()
                                .expect("calls are planned only for images that were encoded");
                            let mode = self.mode(requests[call.request].format);
                            let body = request_body(&self.cfg.model, &call.pieces, data_url, mode);
                            let started = Instant::now();
                            let result = self.client.post(&body);
                            done.push((
                                i,
                                Outcome {
                                    result,
                                    started,
                                    finished: Instant::now(),
                                },
                            ));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a remote worker thread panicked"))
                .collect()
        });
        outcomes.sort_by_key(|(i, _)| *i);
        outcomes.into_iter().map(|(_, o)| o).collect()
    }

    fn assemble(
        &self,
        request: &GuardRequest<'_>,
        calls: &[&Call],
        outcomes: Vec<Outcome>,
    ) -> Result<Judgement, Error> {
        let started = outcomes.iter().map(|o| o.started).min();
        let finished = outcomes.iter().map(|o| o.finished).max();
        let latency_ms = match (started, finished) {
            (Some(s), Some(f)) => f.duration_since(s).as_secs_f64() * 1000.0,
            _ => 0.0,
        };
        let mut outcomes = outcomes.into_iter();
        let whole = outcomes.next().expect("the whole-policy call").result?;
        let mut judgement = match request.format {
            Format::Verdict => {
                let rules: Vec<(usize, Result<ChatResponse, Error>)> = calls[1..]
                    .iter()
                    .zip(outcomes)
                    .map(|(call, o)| (call.rule.expect("rule call"), o.result))
                    .collect();
                score_judgement(request, &whole, rules)?
            }
            Format::Reasoning | Format::Json => generated_judgement(request, &whole)?,
        };
        judgement.latency_ms = latency_ms;
        Ok(judgement)
    }
}

impl Guard for RemoteGuard {
    fn name(&self) -> &str {
        NAME
    }

    fn judge(&self, requests: &[GuardRequest<'_>]) -> Vec<Result<Judgement, Error>> {
        let mut results: Vec<Option<Result<Judgement, Error>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut data_urls: Vec<Option<String>> = vec![None; requests.len()];
        let mut calls = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let planned = sniff_mime(request.image).and_then(|mime| {
                let calls = self.plan(i, request)?;
                Ok((mime, calls))
            });
            match planned {
                Ok((mime, planned)) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(request.image);
                    data_urls[i] = Some(format!("data:{mime};base64,{encoded}"));
                    calls.extend(planned);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let outcomes = self.run(&calls, requests, &data_urls);
        let mut per_request: Vec<(Vec<&Call>, Vec<Outcome>)> = (0..requests.len())
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        for (call, outcome) in calls.iter().zip(outcomes) {
            per_request[call.request].0.push(call);
            per_request[call.request].1.push(outcome);
        }
        results
            .into_iter()
            .zip(per_request)
            .zip(requests)
            .map(|((done, (calls, outcomes)), request)| {
                done.unwrap_or_else(|| self.assemble(request, &calls, outcomes))
            })
            .map(safeguard_core::guard::check_finite)
            .collect()
    }
}

fn unparsable(reason: verdict::NoVerdict, output: &str) -> Error {
    Error::Unparsable {
        backend: NAME.to_string(),
        reason,
        output: output.to_string(),
    }
}

/// The content of the first choice (empty when `null`).
fn content(response: &ChatResponse) -> &str {
    response.choices[0].message.content.as_deref().unwrap_or("")
}

/// Reads a score-mode answer: from the first position's logprobs, else from the text.
fn read_score(response: &ChatResponse) -> Result<Reading, Error> {
    let choice = &response.choices[0];
    let text = content(response);
    let fallback = match choice.first_position() {
        Some(position) => {
            let candidates = position.candidates();
            if let Some(score) = score_from_logprobs(candidates.iter().copied()) {
                return Ok(Reading::Scored {
                    p_unsafe: score.p_unsafe,
                    note: score.note(),
                });
            }
            let listed: Vec<String> = candidates
                .iter()
                .take(5)
                .map(|(t, _)| format!("{t:?}"))
                .collect();
            format!(
                "neither \"safe\" nor \"unsafe\" was among the top logprobs of the answer token (most likely: {}); verdict read from the text, no score",
                listed.join(", ")
            )
        }
        None => "the server returned no logprobs; verdict read from the text, no score".to_string(),
    };
    let parsed =
        verdict::parse(text, Format::Verdict.dialect()).map_err(|e| unparsable(e, text))?;
    Ok(Reading::Parsed {
        verdict: parsed.verdict,
        note: fallback,
    })
}

/// The judgement in score mode: the whole-policy answer decides; each prohibited rule's
/// answer fills `rules` and `rules_hit`.
fn score_judgement(
    request: &GuardRequest<'_>,
    whole: &ChatResponse,
    rules: Vec<(usize, Result<ChatResponse, Error>)>,
) -> Result<Judgement, Error> {
    let threshold = request.threshold;
    let mut notes = Vec::new();
    let (verdict, p_unsafe) = match read_score(whole)? {
        Reading::Scored { p_unsafe, note } => {
            notes.extend(note);
            let verdict = if p_unsafe >= threshold {
                Verdict::Unsafe
            } else {
                Verdict::Safe
            };
            (verdict, Some(p_unsafe))
        }
        Reading::Parsed { verdict, note } => {
            notes.push(note);
            (verdict, None)
        }
    };
    let mut results = Vec::with_capacity(rules.len());
    let mut bounded = Vec::new();
    let mut unassessed = Vec::new();
    for (rule_index, answer) in rules {
        let rule = &request.policy.rules[rule_index];
        let reading = answer.and_then(|r| read_score(&r));
        let (status, score) = match reading {
            Ok(Reading::Scored { p_unsafe, note }) => {
                if note.is_some() {
                    bounded.push(rule.id.as_str());
                }
                (hit_or_clear(p_unsafe >= threshold), Some(p_unsafe))
            }
            Ok(Reading::Parsed { verdict, .. }) => (hit_or_clear(verdict.is_unsafe()), None),
            Err(e) => {
                unassessed.push(format!("{} ({e})", rule.id));
                (RuleStatus::Unassessed, None)
            }
        };
        results.push(RuleResult {
            id: rule.id.clone(),
            stance: rule.stance,
            status,
            score,
        });
    }
    let rules_hit: Vec<String> = results
        .iter()
        .filter(|r| r.status == RuleStatus::Hit)
        .map(|r| r.id.clone())
        .collect();
    if !bounded.is_empty() {
        notes.push(format!(
            "the scores of rules {} are bounds: one answer word was not among the top logprobs",
            bounded.join(", ")
        ));
    }
    if !unassessed.is_empty() {
        notes.push(format!("rules not assessed: {}", unassessed.join("; ")));
    }
    if verdict == Verdict::Safe && !rules_hit.is_empty() {
        notes.push(format!(
            "rules {} reach the threshold when asked on their own, although the whole policy does not",
            rules_hit.join(", ")
        ));
    }
    Ok(Judgement {
        verdict: verdict.into(),
        p_unsafe,
        rules_hit,
        rules: results,
        rationale: None,
        raw_output: Some(content(whole).to_string()),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        backend: NAME.to_string(),
        latency_ms: 0.0,
    })
}

fn hit_or_clear(hit: bool) -> RuleStatus {
    if hit {
        RuleStatus::Hit
    } else {
        RuleStatus::Clear
    }
}

/// The judgement in reasoning or JSON mode, parsed from the generated text. Rule ids named
/// by a JSON answer (`"category": "O3: …"`) become `rules_hit` when the verdict is unsafe and
/// the policy prohibits them.
fn generated_judgement(
    request: &GuardRequest<'_>,
    response: &ChatResponse,
) -> Result<Judgement, Error> {
    let text = content(response);
    let parsed = verdict::parse(text, request.format.dialect()).map_err(|e| unparsable(e, text))?;
    let rules_hit = if parsed.verdict.is_unsafe() {
        parsed
            .categories
            .iter()
            .filter_map(|c| request.policy.rule(c))
            .filter(|r| r.stance == Stance::Prohibited)
            .map(|r| r.id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let note = (response.choices[0].finish_reason.as_deref() == Some("length")).then(|| {
        "the answer reached max_tokens and was cut; its verdict was still readable".to_string()
    });
    Ok(Judgement {
        verdict: Assessment::from(parsed.verdict),
        p_unsafe: None,
        rules_hit,
        rules: Vec::new(),
        rationale: parsed.rationale,
        raw_output: Some(text.to_string()),
        note,
        backend: NAME.to_string(),
        latency_ms: 0.0,
    })
}
