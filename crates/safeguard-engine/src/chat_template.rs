//! A checkpoint's own chat template, rendered as transformers renders it.
//!
//! Fine-tunes may ship a chat template of their own (another default system prompt, other
//! turn markers): `chat_template.jinja` (transformers ≥ 4.43 and v5 write it), else
//! `chat_template.json` (`{"chat_template": …}`, a 4.4x processor's, as the Qwen2.5-VL releases
//! ship), else the `chat_template` key of `tokenizer_config.json` (a string, or a list of named
//! templates of which `default` is used). [`ChatTemplate`] renders it with minijinja under the settings of
//! transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, loop controls,
//! `tojson`, `raise_exception`, and the variables `messages` (HF's format: `role`, and
//! `content` as a list of `{"type": "text", "text"}` / `{"type": "image"}` parts),
//! `add_generation_prompt`, `bos_token`, `eos_token`.
//!
//! The Qwen2.5-VL template writes one `<|image_pad|>` per image; [`ChatTemplate::render`]
//! then expands the k-th one to the k-th image's token count, as the processor does, and
//! fails when the template wrote a different number of placeholders than there are images.
//!
//! `/v1/chat/completions` uses the checkpoint's template when it has one, the built-in Qwen2.5-VL
//! rendering ([`crate::tokenizer::render_chat`]) otherwise. The guard's own prompts (score and
//! reason modes) are SafeGuard's layout and do not go through it.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, Value};

use crate::tokenizer::{Message, Part, Role, IMAGE_PAD, VISION_END, VISION_START};
use crate::EngineError;

/// `chat_template.jinja`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// `chat_template.json` (a processor's template, as transformers 4.4x saved it).
pub const CHAT_TEMPLATE_JSON: &str = "chat_template.json";

/// A compiled chat template and where it came from.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file it was read from.
    pub source: PathBuf,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source` (Jinja text); `path` names it in errors.
    pub fn new(source: String, path: PathBuf) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Input {
                reason: format!("chat template {}: {e}", path.display()),
            })?;
        Ok(Self {
            env,
            source: path,
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        })
    }

    /// The template of a model directory: `chat_template.jinja`, else the `chat_template` of
    /// `tokenizer_config.json`; `None` when it has neither.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>, EngineError> {
        let file = dir.join(CHAT_TEMPLATE_FILE);
        if file.is_file() {
            let text = crate::weights::read_to_string(&file)?;
            return Self::new(text, file).map(Some);
        }
        // transformers 4.4x processors save the template as {"chat_template": "..."}.
        let processor_file = dir.join(CHAT_TEMPLATE_JSON);
        if processor_file.is_file() {
            let text = crate::weights::read_to_string(&processor_file)?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| EngineError::Json {
                    path: processor_file.clone(),
                    source,
                })?;
            if let Some(source) = value["chat_template"].as_str() {
                return Self::new(source.to_string(), processor_file).map(Some);
            }
        }
        let config = dir.join("tokenizer_config.json");
        if !config.is_file() {
            return Ok(None);
        }
        let text = crate::weights::read_to_string(&config)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| EngineError::Json {
                path: config.clone(),
                source,
            })?;
        let token = |key: &str| match &value[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        };
        let source = match &value["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(named) => {
                let default = named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str());
                match default {
                    Some(t) => t.to_string(),
                    None => {
                        return Err(EngineError::Input {
                            reason: format!(
                                "{}: `chat_template` lists named templates but none is `default`",
                                config.display()
                            ),
                        })
                    }
                }
            }
            _ => return Ok(None),
        };
        let mut template = Self::new(source, config)?;
        template.bos_token = token("bos_token").unwrap_or_default();
        if let Some(eos) = token("eos_token") {
            template.eos_token = eos;
        }
        Ok(Some(template))
    }

    /// Renders `messages` (images as [`Part::Image`] with their token counts) and expands each
    /// image's placeholder to its tokens.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let hf: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let parts: Vec<serde_json::Value> = m
                    .parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(text) => serde_json::json!({"type": "text", "text": text}),
                        Part::Image { .. } => serde_json::json!({"type": "image"}),
                    })
                    .collect();
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                serde_json::json!({"role": role, "content": parts})
            })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| self.error(e))?;
        let text = template
            .render(minijinja::context! {
                messages => Value::from_serialize(&hf),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| self.error(e))?;
        let tokens: Vec<usize> = messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter_map(|p| match p {
                Part::Image { tokens } => Some(*tokens),
                Part::Text(_) => None,
            })
            .collect();
        expand_image_pads(&text, &tokens).map_err(|reason| EngineError::Input {
            reason: format!("chat template {}: {reason}", self.source.display()),
        })
    }

    fn error(&self, e: minijinja::Error) -> EngineError {
        EngineError::Input {
            reason: format!("chat template {}: {e:#}", self.source.display()),
        }
    }
}

/// `text` with its k-th `<|vision_start|><|image_pad|><|vision_end|>` holding `tokens[k]` pads.
fn expand_image_pads(text: &str, tokens: &[usize]) -> Result<String, String> {
    let block = format!("{VISION_START}{IMAGE_PAD}{VISION_END}");
    let pieces: Vec<&str> = text.split(block.as_str()).collect();
    if pieces.len() - 1 != tokens.len() {
        return Err(format!(
            "it wrote {} image placeholders for {} images",
            pieces.len() - 1,
            tokens.len()
        ));
    }
    let mut out =
        String::with_capacity(text.len() + tokens.iter().sum::<usize>() * IMAGE_PAD.len());
    for (i, piece) in pieces.iter().enumerate() {
        out.push_str(piece);
        if let Some(&n) = tokens.get(i) {
            out.push_str(VISION_START);
            out.push_str(&IMAGE_PAD.repeat(n));
            out.push_str(VISION_END);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_in_order_and_must_match_the_images() {
        let block = format!("{VISION_START}{IMAGE_PAD}{VISION_END}");
        let text = format!("a{block}b{block}c");
        let out = expand_image_pads(&text, &[2, 1]).unwrap();
        assert_eq!(
            out,
            format!(
                "a{VISION_START}{IMAGE_PAD}{IMAGE_PAD}{VISION_END}b{VISION_START}{IMAGE_PAD}{VISION_END}c"
            )
        );
        assert!(expand_image_pads(&text, &[2]).is_err());
        assert!(expand_image_pads("no image", &[]).is_ok());
    }

    #[test]
    fn the_files_are_looked_up_in_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "from tokenizer_config"}]}"#,
        )
        .unwrap();
        let render = |dir: &Path| {
            ChatTemplate::from_model_dir(dir)
                .unwrap()
                .unwrap()
                .render(&[], false)
                .unwrap()
        };
        assert_eq!(render(dir.path()), "from tokenizer_config");
        std::fs::write(
            dir.path().join(CHAT_TEMPLATE_JSON),
            r#"{"chat_template": "from chat_template.json"}"#,
        )
        .unwrap();
        assert_eq!(render(dir.path()), "from chat_template.json");
        std::fs::write(dir.path().join(CHAT_TEMPLATE_FILE), "from the jinja file").unwrap();
        assert_eq!(render(dir.path()), "from the jinja file");
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t = ChatTemplate::new(
            "{% if messages|length == 0 %}{{ raise_exception('no messages') }}{% endif %}".into(),
            "t.jinja".into(),
        )
        .unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("no messages"), "{err}");
    }
}
