//! The generated demo benchmark, read back with the SafeEditBench loader.

use std::collections::BTreeMap;

use safeguard_core::policy::presets;
use safeguard_eval::dataset::{detect, load, DatasetFormat, ImageSource, LoadOptions};
use safeguard_eval::demo::{write_demo, DEMO_FILE, DEMO_IMAGES, DEMO_POLICIES, DEMO_SIDE};

#[test]
fn demo_round_trip_gives_twelve_images_under_five_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_demo(&dir.path().join("demo"), 7).unwrap();
    assert_eq!(path.file_name().unwrap(), DEMO_FILE);
    assert_eq!(detect(&path).unwrap(), DatasetFormat::SafeEditBench);
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(ds.items.len(), 12 * 5);

    // Policies are the presets' texts.
    let names: Vec<&str> = ds.policies.keys().map(String::as_str).collect();
    assert_eq!(names, DEMO_POLICIES);
    for (name, policy) in &ds.policies {
        let preset = presets::get(name).unwrap();
        assert_eq!(policy.prompt_text(), preset.prompt_text(), "{name}");
    }

    // Labels get stricter from L1 to L5 and follow the catalogue.
    let mut unsafe_per_policy: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &ds.items {
        let level: u8 = item.policy[1..].parse().unwrap();
        let path = item.id.split_once('/').unwrap().1;
        let image = DEMO_IMAGES.iter().find(|i| i.image_path == path).unwrap();
        assert_eq!(
            item.label.is_unsafe(),
            image.is_unsafe_at(level),
            "{}",
            item.id
        );
        *unsafe_per_policy.entry(item.policy.as_str()).or_default() +=
            usize::from(item.label.is_unsafe());
    }
    let counts: Vec<usize> = unsafe_per_policy.values().copied().collect();
    assert_eq!(counts, [0, 1, 2, 5, 7]);
    for image in DEMO_IMAGES {
        for level in 1..5 {
            assert!(!image.is_unsafe_at(level) || image.is_unsafe_at(level + 1));
        }
    }

    // Pairs: six, each an original and its edit, under every policy.
    let mut pairs: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for item in &ds.items {
        let pair = item
            .pair_id
            .as_deref()
            .expect("every demo image has its pair");
        pairs
            .entry((item.policy.as_str(), pair))
            .or_default()
            .push(item.source.as_deref().unwrap());
        assert!(item.category.as_deref().unwrap().starts_with('O'));
    }
    assert_eq!(pairs.len(), 6 * 5);
    assert!(pairs.values().all(|s| s == &["original", "edited"]));

    // The images are PNGs of the documented size, and the seed fixes the bytes.
    let ImageSource::Bytes { bytes, .. } = &ds.items[0].image else {
        panic!("embedded bytes expected");
    };
    let img = image::load_from_memory(bytes).unwrap();
    assert_eq!((img.width(), img.height()), (DEMO_SIDE, DEMO_SIDE));
    let again = std::fs::read(write_demo(&dir.path().join("again"), 7).unwrap()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), again);
    let other = std::fs::read(write_demo(&dir.path().join("other"), 8).unwrap()).unwrap();
    assert_ne!(again, other);
}

#[test]
fn originals_and_edits_differ() {
    let dir = tempfile::tempdir().unwrap();
    let ds = load(&write_demo(dir.path(), 1).unwrap(), &LoadOptions::default()).unwrap();
    let bytes = |i: usize| match &ds.items[i].image {
        ImageSource::Bytes { bytes, .. } => bytes.clone(),
        other => panic!("{other:?}"),
    };
    let distinct: std::collections::HashSet<_> = (0..12).map(bytes).collect();
    assert_eq!(distinct.len(), 12);
}
