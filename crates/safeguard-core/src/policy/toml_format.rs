//! The TOML policy format (see [`super::Policy::from_toml`]).

use serde::Deserialize;

use super::{Policy, Rule};
use crate::error::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: Option<String>,
    title: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    exceptions: Vec<String>,
}

pub(super) fn parse(name: &str, text: &str) -> Result<Policy, Error> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| Error::Toml {
        message: e.to_string().trim().to_string(),
    })?;
    Ok(Policy {
        name: file.name.unwrap_or_else(|| name.to_string()),
        title: file.title,
        description: file.description.trim().to_string(),
        rules: file.rules,
        exceptions: file.exceptions,
    })
}
