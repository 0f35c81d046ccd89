//! `safeguard policy list | show | render`.

use std::process::ExitCode;

use anyhow::Context;
use safeguard_core::policy::presets::PRESETS;
use safeguard_core::prompt::{self, PromptSpec};
use safeguard_core::{Format, Policy, Stance};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// List the built-in policies.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a policy: its rules and the exact text the model reads.
    Show(ShowArgs),
    /// Print the full prompt (chat template) the guard sends for a policy.
    Render {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Answer format: verdict, reasoning or json.
        #[arg(long, default_value = "verdict", env = "SAFEGUARD_FORMAT")]
        format: Format,
        /// Replace the default question asked after the image.
        #[arg(long, conflicts_with = "rule")]
        question: Option<String>,
        /// Ask about one rule of the policy only (the question the guard scores for rules hit).
        #[arg(long, value_name = "RULE")]
        rule: Option<String>,
        /// Guard prompt layout: safeguard, plain, safeguard-vl, llavaguard or a template file.
        #[arg(long, default_value = "safeguard")]
        template: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print JSON (the structured policy, its prompt text and hash).
    #[arg(long)]
    json: bool,
}

/// Selects a policy and switches rules on or off.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// A preset name (see `safeguard policy list`), a .md/.toml/.txt file, or policy text.
    pub policy: String,
    /// Mark a rule of the policy as allowed (repeatable), e.g. `--allow O4`.
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// Mark a rule of the policy as prohibited (repeatable).
    #[arg(long = "prohibit", value_name = "RULE")]
    pub prohibit: Vec<String>,
}

impl PolicyArgs {
    /// Resolves the policy and applies the rule switches.
    pub fn load(&self) -> anyhow::Result<Policy> {
        load(&self.policy, &self.allow, &self.prohibit)
    }
}

/// Resolves a policy spec (preset, file or text), then marks rules allowed or prohibited.
pub fn load(spec: &str, allow: &[String], prohibit: &[String]) -> anyhow::Result<Policy> {
    let mut policy =
        Policy::resolve(spec).with_context(|| format!("cannot load policy {:?}", short(spec)))?;
    for id in allow {
        policy.set_stance(id, Stance::Allowed)?;
    }
    for id in prohibit {
        policy.set_stance(id, Stance::Prohibited)?;
    }
    Ok(policy)
}

fn short(spec: &str) -> String {
    let mut s: String = spec.chars().take(60).collect();
    if s.len() < spec.len() {
        s.push('…');
    }
    s
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::List { json } => list(json),
        PolicyCommand::Show(args) => show(&args),
        PolicyCommand::Render {
            policy,
            format,
            question,
            rule,
            template,
        } => {
            let policy = policy.load()?;
            let template = safeguard_core::template::Template::load(&template)?;
            let question = match rule {
                Some(id) => {
                    let rule = policy
                        .rule(&id)
                        .with_context(|| format!("policy {:?} has no rule {id:?}", policy.name))?;
                    Some(prompt::rule_question(rule))
                }
                None => question,
            };
            let spec = PromptSpec {
                question: question.as_deref(),
                ..PromptSpec::new(&policy, format)
            };
            print!("{}", prompt::render_with(&template, &spec)?.text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let rows: Vec<serde_json::Value> = PRESETS
            .iter()
            .map(|p| {
                let policy = safeguard_core::policy::presets::get(p.name).expect("preset");
                serde_json::json!({
                    "name": p.name,
                    "summary": p.summary,
                    "rules": policy.rules.len(),
                    "hash": policy.hash(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = PRESETS.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for preset in PRESETS {
        println!("{:width$}  {}", preset.name, preset.summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let policy = args.policy.load()?;
    if args.json {
        let mut value = serde_json::to_value(&policy)?;
        value["prompt_text"] = policy.prompt_text().into();
        value["hash"] = policy.hash().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("policy: {}", policy.name);
    println!("hash:   {}", policy.hash());
    if !policy.rules.is_empty() {
        println!("rules:");
        for rule in &policy.rules {
            println!("  {:<10} {:<24} {}", rule.stance, rule.id, rule.title);
        }
    }
    println!(
        "\n--- text given to the model ---\n{}",
        policy.prompt_text()
    );
    Ok(ExitCode::SUCCESS)
}
