use safeguard_core::policy::presets;
use safeguard_core::prompt::{self, PromptSpec, IMAGE_PAD, VISION_START};
use safeguard_core::{Format, Policy};

fn l3() -> Policy {
    presets::get("L3").unwrap()
}

#[test]
fn rendered_prompts_match_snapshots() {
    let policy = Policy::from_text("custom", "No photos of spiders.").unwrap();
    for format in Format::ALL {
        let rendered = prompt::render(&PromptSpec::new(&policy, format));
        insta::assert_snapshot!(format!("prompt_{format}"), rendered.text());
    }
    let spec = PromptSpec {
        question: Some("Can this image be shown to children?"),
        system: Some("You are a careful moderator."),
        ..PromptSpec::new(&policy, Format::Verdict)
    };
    insta::assert_snapshot!("prompt_custom_question", prompt::render(&spec).text());
}

#[test]
fn policy_comes_before_the_image() {
    let policy = l3();
    let text = prompt::render(&PromptSpec::new(&policy, Format::Verdict)).text();
    let policy_at = text.find(&policy.prompt_text()).unwrap();
    let image_at = text.find(VISION_START).unwrap();
    assert!(policy_at < image_at);
}

#[test]
fn prompts_under_one_policy_share_the_prefix() {
    let policy = l3();
    let a = prompt::render(&PromptSpec::new(&policy, Format::Verdict));
    let b = prompt::render(&PromptSpec {
        question: Some("Is this fine?"),
        ..PromptSpec::new(&policy, Format::Verdict)
    });
    assert_eq!(a.prefix, b.prefix);
    assert!(a.text_with_image_tokens(4).starts_with(&a.prefix));
    let other = prompt::render(&PromptSpec::new(
        &presets::get("L4").unwrap(),
        Format::Verdict,
    ));
    assert_ne!(a.prefix, other.prefix);
}

#[test]
fn image_block_expands_to_n_pads() {
    let rendered = prompt::render(&PromptSpec::new(&l3(), Format::Json));
    let text = rendered.text_with_image_tokens(64);
    assert_eq!(text.matches(IMAGE_PAD).count(), 64);
    assert_eq!(rendered.text().matches(IMAGE_PAD).count(), 1);
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn format_names_round_trip() {
    for format in Format::ALL {
        assert_eq!(format.as_str().parse::<Format>().unwrap(), format);
    }
    let err = "yaml".parse::<Format>().unwrap_err();
    assert!(
        err.to_string().contains("verdict, reasoning, json"),
        "{err}"
    );
}
