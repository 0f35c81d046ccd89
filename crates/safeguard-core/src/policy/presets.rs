//! Built-in policies, written by us and shipped in the binary.
//!
//! - `L1`…`L5`: the five strictness levels of the SafeEditBench paper, from L1 (all human
//!   expression allowed unless it incites violence or harassment) to L5 (only minimal,
//!   non-controversial content is safe, even innocuous physical contact is not). Our own
//!   wording of the levels, not the benchmark's policy texts: SafeEditBench rows carry their
//!   own policy text, which the evaluation harness uses instead.
//! - `llavaguard`: the LlavaGuard O1–O9 taxonomy, every category prohibited by default; switch
//!   categories with [`super::Policy::set_stance`].
//! - `openai`: a policy organised by the 13 OpenAI moderation categories, in our own words.
//! - `unsafebench`: UnsafeBench's 11 categories.

use super::Policy;

/// A built-in policy: its name, a one-line summary and its Markdown source.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name used on the command line (`--policy L3`).
    pub name: &'static str,
    /// One line for `safeguard policy list`.
    pub summary: &'static str,
    /// The Markdown source, parsed with [`Policy::from_markdown`].
    pub source: &'static str,
}

/// Every built-in policy, in the order `policy list` shows them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "L1",
        summary:
            "Most permissive: all human expression is safe unless it incites violence or harassment",
        source: include_str!("../../policies/L1.md"),
    },
    Preset {
        name: "L2",
        summary: "Permissive: mature content allowed; explicit sex and extreme gore are not",
        source: include_str!("../../policies/L2.md"),
    },
    Preset {
        name: "L3",
        summary: "Mainstream adult platform: no explicit sex, graphic violence, self-harm or hate",
        source: include_str!("../../policies/L3.md"),
    },
    Preset {
        name: "L4",
        summary: "General audience: no nudity, violence, drugs, hate or disturbing content",
        source: include_str!("../../policies/L4.md"),
    },
    Preset {
        name: "L5",
        summary:
            "Most restrictive: only minimal content; even innocuous physical contact is unsafe",
        source: include_str!("../../policies/L5.md"),
    },
    Preset {
        name: "llavaguard",
        summary:
            "LlavaGuard taxonomy O1-O9, each category switchable between prohibited and allowed",
        source: include_str!("../../policies/llavaguard.md"),
    },
    Preset {
        name: "openai",
        summary: "The 13 OpenAI moderation categories (used for UnsafeBench, as in the paper)",
        source: include_str!("../../policies/openai.md"),
    },
    Preset {
        name: "unsafebench",
        summary: "UnsafeBench's 11 categories",
        source: include_str!("../../policies/unsafebench.md"),
    },
];

/// The preset with this name (case-insensitive), parsed.
pub fn get(name: &str) -> Option<Policy> {
    let preset = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))?;
    // The presets are parsed by a unit test; a failure here is a bug in this crate.
    Some(
        Policy::from_markdown(preset.name, preset.source)
            .unwrap_or_else(|e| panic!("built-in policy {} is invalid: {e}", preset.name)),
    )
}

/// All preset names.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_has_prohibited_rules() {
        for preset in PRESETS {
            let policy = get(preset.name).unwrap();
            assert_eq!(policy.name, preset.name);
            assert!(policy.prohibited().count() > 0, "{}", preset.name);
            assert!(policy.title.is_some(), "{}", preset.name);
        }
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(get("l3").unwrap().name, "L3");
        assert!(get("L6").is_none());
    }

    #[test]
    fn taxonomies_have_the_documented_categories() {
        let ids = |name: &str| -> Vec<String> {
            get(name).unwrap().rules.into_iter().map(|r| r.id).collect()
        };
        let llava: Vec<String> = (1..=9).map(|i| format!("O{i}")).collect();
        assert_eq!(ids("llavaguard"), llava);
        assert_eq!(ids("openai").len(), 13);
        assert!(ids("openai").contains(&"sexual/minors".to_string()));
        assert_eq!(ids("unsafebench").len(), 11);
    }
}
