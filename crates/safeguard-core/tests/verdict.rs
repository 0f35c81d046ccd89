use proptest::prelude::*;
use safeguard_core::verdict::{parse, Dialect, NoVerdict, OnUnparsable};
use safeguard_core::Verdict::{self, Safe, Unsafe};

fn verdict(text: &str, dialect: Dialect) -> Result<Verdict, NoVerdict> {
    parse(text, dialect).map(|p| p.verdict)
}

#[test]
fn bare_words() {
    for (text, want) in [
        ("safe", Safe),
        ("unsafe", Unsafe),
        ("Unsafe.", Unsafe),
        ("**SAFE**", Safe),
        ("  unsafe\n", Unsafe),
        ("Answer: unsafe", Unsafe),
        ("unsafe<|im_end|>", Unsafe),
        ("The image is unsafe under this policy.", Unsafe),
        ("\"safe\"", Safe),
    ] {
        assert_eq!(verdict(text, Dialect::Verdict), Ok(want), "{text:?}");
        assert_eq!(verdict(text, Dialect::Auto), Ok(want), "{text:?} (auto)");
    }
}

#[test]
fn bare_words_that_do_not_decide() {
    assert_eq!(verdict("", Dialect::Verdict), Err(NoVerdict::Empty));
    assert_eq!(
        verdict(" \n<|im_end|>", Dialect::Auto),
        Err(NoVerdict::Empty)
    );
    assert_eq!(
        verdict("It could be safe or unsafe.", Dialect::Verdict),
        Err(NoVerdict::Ambiguous)
    );
    assert_eq!(
        verdict("This is not safe.", Dialect::Verdict),
        Err(NoVerdict::Ambiguous)
    );
    assert_eq!(
        verdict("I cannot help with that.", Dialect::Verdict),
        Err(NoVerdict::Unrecognized)
    );
    assert_eq!(
        verdict("safety", Dialect::Verdict),
        Err(NoVerdict::Unrecognized)
    );
}

#[test]
fn reasoning_yes_is_safe_and_no_is_unsafe() {
    let safe = "<think>The image shows a landscape, nothing the policy forbids.</think>\n<answer>yes</answer>";
    let parsed = parse(safe, Dialect::Reasoning).unwrap();
    assert_eq!(parsed.verdict, Safe);
    assert_eq!(
        parsed.rationale.as_deref(),
        Some("The image shows a landscape, nothing the policy forbids.")
    );
    assert_eq!(parse(safe, Dialect::Auto).unwrap().verdict, Safe);
    let unsafe_ = "<think>Blood.</think><answer> No. </answer>";
    assert_eq!(verdict(unsafe_, Dialect::Reasoning), Ok(Unsafe));
    assert_eq!(
        verdict("<think>x</think><answer>unsafe</answer>", Dialect::Auto),
        Ok(Unsafe)
    );
    // Generation stopped before the closing tag.
    assert_eq!(
        verdict("<think>fine</think><answer>yes", Dialect::Reasoning),
        Ok(Safe)
    );
}

#[test]
fn reasoning_without_a_usable_answer() {
    assert_eq!(
        verdict("<think>hmm</think>", Dialect::Reasoning),
        Err(NoVerdict::MissingAnswer)
    );
    assert_eq!(
        verdict(
            "<think>hmm</think><answer>maybe</answer>",
            Dialect::Reasoning
        ),
        Err(NoVerdict::UnknownAnswer {
            answer: "maybe".into()
        })
    );
    assert!(matches!(
        verdict("<answer>yes and no</answer>", Dialect::Auto),
        Err(NoVerdict::UnknownAnswer { .. })
    ));
}

#[test]
fn llavaguard_json() {
    let text =
        r#"{"rating": "Unsafe", "category": "O3: Sexual Content", "rationale": "Explicit pose."}"#;
    let parsed = parse(text, Dialect::Json).unwrap();
    assert_eq!(parsed.verdict, Unsafe);
    assert_eq!(parsed.categories, ["O3"]);
    assert_eq!(parsed.rationale.as_deref(), Some("Explicit pose."));
    let fenced = "```json\n{\"rating\": \"Safe\", \"category\": \"NA: None applying\", \"rationale\": \"ok\"}\n```";
    let parsed = parse(fenced, Dialect::Auto).unwrap();
    assert_eq!(parsed.verdict, Safe);
    assert!(parsed.categories.is_empty());
    assert!(matches!(
        parse("{\"rating\": \"Review\"}", Dialect::Json),
        Err(NoVerdict::UnknownAnswer { .. })
    ));
    assert!(matches!(
        parse("{\"rating\": \"Safe\"", Dialect::Json),
        Err(NoVerdict::BadJson { .. })
    ));
    assert!(matches!(
        parse("{\"category\": \"O1\"}", Dialect::Json),
        Err(NoVerdict::BadJson { .. })
    ));
}

#[test]
fn llama_guard() {
    let parsed = parse("unsafe\nS1,S10", Dialect::LlamaGuard).unwrap();
    assert_eq!(parsed.verdict, Unsafe);
    assert_eq!(parsed.categories, ["S1", "S10"]);
    let auto = parse("\n\nunsafe\nS3", Dialect::Auto).unwrap();
    assert_eq!((auto.verdict, auto.categories), (Unsafe, vec!["S3".into()]));
    assert_eq!(verdict("safe", Dialect::LlamaGuard), Ok(Safe));
    assert_eq!(
        verdict("unsafe\nS1\nextra line", Dialect::LlamaGuard),
        Err(NoVerdict::Unrecognized)
    );
}

#[test]
fn shieldgemma_yes_means_violation() {
    assert_eq!(verdict("Yes", Dialect::ShieldGemma), Ok(Unsafe));
    assert_eq!(verdict("No.", Dialect::ShieldGemma), Ok(Safe));
    assert_eq!(
        verdict("Yes", Dialect::Auto),
        Err(NoVerdict::AmbiguousYesNo)
    );
    assert_eq!(
        verdict("maybe", Dialect::ShieldGemma),
        Err(NoVerdict::Unrecognized)
    );
}

#[test]
fn fallbacks_are_explicit() {
    let none = parse("???", Dialect::Verdict);
    assert_eq!(OnUnparsable::Safe.apply(none.clone()), Ok(Safe));
    assert_eq!(OnUnparsable::Unsafe.apply(none.clone()), Ok(Unsafe));
    assert_eq!(
        OnUnparsable::Error.apply(none),
        Err(NoVerdict::Unrecognized)
    );
    assert_eq!(
        OnUnparsable::Safe.apply(parse("unsafe", Dialect::Verdict)),
        Ok(Unsafe)
    );
    assert_eq!(
        "UNSAFE".parse::<OnUnparsable>().unwrap(),
        OnUnparsable::Unsafe
    );
    assert!("sometimes".parse::<OnUnparsable>().is_err());
}

#[test]
fn labels_accept_words_and_digits() {
    assert_eq!(Verdict::from_label("1"), Some(Unsafe));
    assert_eq!(Verdict::from_label(" Safe "), Some(Safe));
    assert_eq!(Verdict::from_label("2"), None);
}

const DIALECTS: [Dialect; 6] = [
    Dialect::Auto,
    Dialect::Verdict,
    Dialect::Reasoning,
    Dialect::Json,
    Dialect::LlamaGuard,
    Dialect::ShieldGemma,
];

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        for dialect in DIALECTS {
            let _ = parse(&text, dialect);
        }
    }

    #[test]
    fn never_panics_on_tag_soup(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("<think>".to_string()), Just("</think>".to_string()),
                Just("<answer>".to_string()), Just("</answer>".to_string()),
                Just("{".to_string()), Just("}".to_string()), Just("\"rating\":".to_string()),
                Just("```".to_string()), Just("<|im_end|>".to_string()), Just("<|".to_string()),
                Just("yes".to_string()), Just("unsafe".to_string()), Just("\n".to_string()),
                "[a-zA-Zé ,.:]{0,12}",
            ],
            0..24,
        )
    ) {
        let text = parts.concat();
        for dialect in DIALECTS {
            let _ = parse(&text, dialect);
        }
    }

    #[test]
    fn a_single_verdict_word_is_always_read(unsafe_ in any::<bool>(), lead in "[ \n]{0,3}", tail in "[.!\n ]{0,3}") {
        let word = if unsafe_ { "unsafe" } else { "safe" };
        let want = if unsafe_ { Unsafe } else { Safe };
        let text = format!("{lead}{word}{tail}");
        prop_assert_eq!(verdict(&text, Dialect::Verdict), Ok(want));
        prop_assert_eq!(verdict(&text, Dialect::Auto), Ok(want));
    }
}
