use safeguard_core::policy::{presets, Policy, Stance, MAX_POLICY_BYTES};
use safeguard_core::Error;

const MARKDOWN: &str = "\
# Family forum

Judge images for a forum read by families.

## Prohibited
### weapons: Weapons
Firearms or knives aimed at a person.
- toy guns count too
- **Gore**: visible wounds,
  blood or organs

## Allowed
### art-nudity: Classical art
Nudity in paintings and sculpture.

## Exceptions
- News reporting may show the aftermath of violence
  without gore.
";

#[test]
fn markdown_policy_has_rules_stances_and_exceptions() {
    let policy = Policy::from_markdown("forum", MARKDOWN).unwrap();
    assert_eq!(policy.title.as_deref(), Some("Family forum"));
    assert_eq!(
        policy.description,
        "Judge images for a forum read by families."
    );
    let summary: Vec<(&str, &str, Stance)> = policy
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.title.as_str(), r.stance))
        .collect();
    assert_eq!(
        summary,
        [
            ("weapons", "Weapons", Stance::Prohibited),
            ("gore", "Gore", Stance::Prohibited),
            ("art-nudity", "Classical art", Stance::Allowed),
        ]
    );
    assert_eq!(
        policy.rule("weapons").unwrap().description,
        "Firearms or knives aimed at a person.\n- toy guns count too"
    );
    assert_eq!(
        policy.rule("gore").unwrap().description,
        "visible wounds,\nblood or organs"
    );
    assert_eq!(
        policy.exceptions,
        ["News reporting may show the aftermath of violence without gore."]
    );
}

#[test]
fn toml_and_markdown_render_the_same_prompt_text() {
    let toml = r#"
title = "Family forum"
description = "Judge images for a forum read by families."
exceptions = ["News reporting may show the aftermath of violence without gore."]

[[rules]]
id = "weapons"
title = "Weapons"
stance = "prohibited"
description = "Firearms or knives aimed at a person.\n- toy guns count too"

[[rules]]
id = "gore"
title = "Gore"
stance = "prohibited"
description = "visible wounds, blood or organs"

[[rules]]
id = "art-nudity"
title = "Classical art"
stance = "allowed"
description = "Nudity in paintings and sculpture."
"#;
    let from_toml = Policy::from_toml("forum", toml).unwrap();
    let from_md = Policy::from_markdown("forum", MARKDOWN).unwrap();
    assert_eq!(from_toml.prompt_text(), from_md.prompt_text());
    assert_eq!(from_toml.hash(), from_md.hash());
    insta::assert_snapshot!("forum_prompt_text", from_md.prompt_text());
}

#[test]
fn raw_text_policy_is_used_verbatim() {
    let policy = Policy::resolve("  No images of cats, please.  ").unwrap();
    assert_eq!(policy.name, "custom");
    assert!(policy.rules.is_empty());
    assert_eq!(policy.prompt_text(), "No images of cats, please.");
}

#[test]
fn resolve_prefers_presets_then_files_then_text() {
    assert_eq!(Policy::resolve("l5").unwrap().name, "L5");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forum.md");
    std::fs::write(&path, MARKDOWN).unwrap();
    let policy = Policy::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(policy.name, "forum");
    assert_eq!(policy.rules.len(), 3);
}

#[test]
fn a_mistyped_preset_is_an_error_not_a_policy() {
    let err = Policy::resolve("L6").unwrap_err();
    assert!(matches!(err, Error::UnknownPreset { .. }), "{err}");
    assert!(err.to_string().contains("L1, L2, L3, L4, L5"), "{err}");
}

#[test]
fn a_missing_policy_file_names_the_path() {
    let err = Policy::resolve("does/not/exist.md").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("does/not/exist.md"), "{err}");
}

#[test]
fn malformed_markdown_reports_the_line() {
    let text = "Intro.\n\n## Prohibited\nstray text without a rule\n";
    let err = Policy::from_markdown("bad", text).unwrap_err();
    match err {
        Error::Markdown { line, message } => {
            assert_eq!(line, 4);
            assert!(message.contains("must belong to a rule"), "{message}");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn bullet_rules_need_a_bold_title() {
    let text = "## Allowed\n- just a bullet\n";
    let err = Policy::from_markdown("bad", text).unwrap_err();
    assert!(matches!(err, Error::Markdown { line: 2, .. }), "{err}");
}

#[test]
fn duplicate_and_malformed_rule_ids_are_rejected() {
    let dup = "## Prohibited\n### a: One\n### A: Two\n";
    assert!(matches!(
        Policy::from_markdown("dup", dup).unwrap_err(),
        Error::DuplicateRule { .. }
    ));
    let toml = "[[rules]]\nid = \"has space\"\ntitle = \"X\"\nstance = \"prohibited\"\n";
    assert!(matches!(
        Policy::from_toml("bad", toml).unwrap_err(),
        Error::BadRuleId { .. }
    ));
}

#[test]
fn toml_errors_name_the_problem() {
    let err = Policy::from_toml(
        "bad",
        "[[rules]]\nid = \"x\"\ntitle = \"X\"\nstance = \"maybe\"\n",
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("maybe") && message.contains("line 4"),
        "{message}"
    );
    let err = Policy::from_toml("bad", "colour = \"red\"\n").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn empty_and_oversized_policies_are_rejected() {
    assert!(matches!(
        Policy::from_text("x", "   \n ").unwrap_err(),
        Error::Empty
    ));
    let huge = "word ".repeat(MAX_POLICY_BYTES / 4);
    assert!(matches!(
        Policy::from_text("x", &huge).unwrap_err(),
        Error::TooLarge { .. }
    ));
    assert!(matches!(
        Policy::from_markdown("x", &huge).unwrap_err(),
        Error::TooLarge { .. }
    ));
}

#[test]
fn a_file_with_an_unknown_extension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "rules: []").unwrap();
    let err = Policy::resolve(path.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::UnknownExtension { .. }), "{err}");
}

#[test]
fn errors_inside_a_file_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.md");
    std::fs::write(&path, "## Prohibited\noops\n").unwrap();
    let err = Policy::from_file(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("bad.md") && message.contains("line 2"),
        "{message}"
    );
}

#[test]
fn llavaguard_categories_can_be_switched() {
    let mut policy = presets::get("llavaguard").unwrap();
    assert_eq!(policy.allowed().count(), 0);
    policy.set_stance("o4", Stance::Allowed).unwrap();
    assert_eq!(policy.rule("O4").unwrap().stance, Stance::Allowed);
    assert!(policy
        .prompt_text()
        .contains("Explicitly allowed content (safe under this policy):\n- [O4] Nudity Content"));
    let before = presets::get("llavaguard").unwrap();
    assert_ne!(policy.hash(), before.hash());
    let err = policy.set_stance("O10", Stance::Allowed).unwrap_err();
    assert!(err.to_string().contains("O1, O2"), "{err}");
}

#[test]
fn preset_levels_grow_stricter() {
    // L1 allows what L5 prohibits: the levels must differ in what they forbid.
    let l1 = presets::get("L1").unwrap();
    let l5 = presets::get("L5").unwrap();
    assert!(l1.prompt_text().contains("incite") || l1.prompt_text().contains("Incitement"));
    assert!(l5.prompt_text().to_lowercase().contains("kissing"));
    assert!(l1.allowed().count() > 0);
}

#[test]
fn preset_texts_are_stable() {
    for name in presets::names() {
        let policy = presets::get(name).unwrap();
        insta::assert_snapshot!(format!("preset_{name}"), policy.prompt_text());
    }
}
