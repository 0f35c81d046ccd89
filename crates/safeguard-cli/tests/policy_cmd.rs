use serde_json::Value;

use crate::cli_common::{fails, ok};

#[test]
fn list_shows_every_preset() {
    let out = ok(&["policy", "list"]);
    for name in [
        "L1",
        "L2",
        "L3",
        "L4",
        "L5",
        "llavaguard",
        "openai",
        "unsafebench",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{out}"
        );
    }
    let json: Value = serde_json::from_str(&ok(&["policy", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 8);
    assert_eq!(json[0]["name"], "L1");
}

#[test]
fn show_prints_rules_and_model_text() {
    let out = ok(&["policy", "show", "L5"]);
    assert!(
        out.contains("physical-contact") && out.contains("text given to the model"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&ok(&[
        "policy",
        "show",
        "llavaguard",
        "--json",
        "--allow",
        "O4",
    ]))
    .unwrap();
    assert_eq!(json["name"], "llavaguard");
    assert_eq!(json["rules"][3]["id"], "O4");
    assert_eq!(json["rules"][3]["stance"], "allowed");
    assert_eq!(json["hash"].as_str().unwrap().len(), 64);
    assert!(json["prompt_text"]
        .as_str()
        .unwrap()
        .contains("[O4] Nudity Content"));
}

#[test]
fn show_reads_files_and_raw_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(
        &path,
        "[[rules]]\nid = \"cats\"\ntitle = \"Cats\"\nstance = \"prohibited\"\n",
    )
    .unwrap();
    let json: Value =
        serde_json::from_str(&ok(&["policy", "show", path.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["name"], "mine");
    let out = ok(&["policy", "show", "No dogs on this site."]);
    assert!(out.contains("No dogs on this site."), "{out}");
}

#[test]
fn unknown_policies_and_rules_exit_2() {
    let err = fails(&["policy", "show", "L9"]);
    assert!(err.contains("L9") && err.contains("L1, L2"), "{err}");
    let err = fails(&["policy", "show", "L3", "--allow", "nope"]);
    assert!(err.contains("nope") && err.contains("sexual"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.md");
    std::fs::write(&bad, "## Prohibited\nloose text\n").unwrap();
    let err = fails(&["policy", "show", bad.to_str().unwrap()]);
    assert!(err.contains("bad.md") && err.contains("line 2"), "{err}");
}

#[test]
fn render_prints_the_chat_template() {
    let out = ok(&["policy", "render", "L2", "--format", "reasoning"]);
    assert!(out.starts_with("<|im_start|>system\nA conversation between User and Assistant."));
    assert!(out.contains("<|vision_start|><|image_pad|><|vision_end|>"));
    assert!(out.ends_with("<|im_start|>assistant\n"));
    let err = fails(&["policy", "render", "L2", "--format", "xml"]);
    assert!(err.contains("xml"), "{err}");
}

#[test]
fn render_rule_asks_about_one_rule_after_the_same_prefix() {
    let whole = ok(&["policy", "render", "llavaguard"]);
    let rule = ok(&["policy", "render", "llavaguard", "--rule", "O3"]);
    let image = "<|vision_start|><|image_pad|><|vision_end|>";
    let (whole_prefix, _) = whole.split_once(image).unwrap();
    let (rule_prefix, rule_suffix) = rule.split_once(image).unwrap();
    assert_eq!(
        whole_prefix, rule_prefix,
        "rule questions share the policy prefix"
    );
    assert!(
        rule_suffix.starts_with("Consider only the rule [O3] Sexual Content of the policy above."),
        "{rule_suffix}"
    );
    let err = fails(&["policy", "render", "llavaguard", "--rule", "O99"]);
    assert!(err.contains("no rule \"O99\""), "{err}");
}
