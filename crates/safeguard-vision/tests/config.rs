//! `PreprocessConfig`: defaults, `preprocessor_config.json` parsing, validation.

use safeguard_vision::{PreprocessConfig, VisionError};

#[test]
fn defaults_are_the_processor_defaults() {
    let cfg = PreprocessConfig::default();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (3136, 1_003_520));
    assert_eq!(
        (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size),
        (14, 2, 2)
    );
    assert_eq!((cfg.factor(), cfg.patch_dim()), (28, 1176));
}

#[test]
fn reads_the_qwen25_vl_file() {
    // The file shipped with Qwen2.5-VL-7B-Instruct (older layout: top-level pixel bounds).
    let text = r#"{
      "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
      "temporal_patch_size": 2, "merge_size": 2,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"
    }"#;
    let cfg = PreprocessConfig::from_json_str(text).unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (3136, 12_845_056));
}

#[test]
fn reads_the_size_keys_and_prefers_top_level_bounds() {
    let cfg = PreprocessConfig::from_json_str(
        r#"{"size": {"shortest_edge": 6272, "longest_edge": 50176}}"#,
    )
    .unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (6272, 50_176));
    let cfg = PreprocessConfig::from_json_str(
        r#"{"min_pixels": 3136, "size": {"shortest_edge": 6272, "longest_edge": 50176}}"#,
    )
    .unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (3136, 50_176));
}

#[test]
fn from_model_dir_falls_back_to_defaults_and_reads_the_file() {
    let dir = std::env::temp_dir().join(format!("sg-vision-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        PreprocessConfig::from_model_dir(&dir).unwrap(),
        PreprocessConfig::default()
    );
    let path = dir.join("preprocessor_config.json");
    std::fs::write(&path, r#"{"max_pixels": 50176}"#).unwrap();
    assert_eq!(
        PreprocessConfig::from_model_dir(&dir).unwrap().max_pixels,
        50_176
    );
    std::fs::write(&path, r#"{"max_pixels": "lots"}"#).unwrap();
    let err = PreprocessConfig::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(err, VisionError::ConfigParse { ref path, .. } if path.ends_with("preprocessor_config.json"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unusable_configs_are_refused() {
    for text in [
        r#"{"min_pixels": 100000, "max_pixels": 5000}"#,
        r#"{"min_pixels": 0}"#,
        r#"{"max_pixels": 1000000000000}"#,
        r#"{"patch_size": 0}"#,
        r#"{"image_std": [0.2, 0.0, 0.3]}"#,
        r#"{"do_normalize": false}"#,
        r#"{"rescale_factor": 1.0}"#,
    ] {
        assert!(
            matches!(
                PreprocessConfig::from_json_str(text),
                Err(VisionError::InvalidConfig(_))
            ),
            "{text}"
        );
    }
}

/// Processor directories saved by transformers itself (`scripts/fixtures/processor_versions.py`):
/// 4.55 writes `preprocessor_config.json`, v5 only `processor_config.json` with the settings
/// nested under `image_processor`. Both hold min_pixels 3136 and max_pixels 200704.
#[test]
fn processor_files_of_transformers_4_and_5_are_read() {
    use safeguard_vision::ConfigSource;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (v4, source) =
        PreprocessConfig::from_model_dir_with_source(fixtures.join("processor-4.55")).unwrap();
    assert!(
        matches!(source, ConfigSource::PreprocessorConfig(_)),
        "{source:?}"
    );
    let (v5, source) =
        PreprocessConfig::from_model_dir_with_source(fixtures.join("processor-v5")).unwrap();
    assert!(
        matches!(source, ConfigSource::ProcessorConfig(_)),
        "{source:?}"
    );
    assert!(!fixtures
        .join("processor-v5/preprocessor_config.json")
        .exists());
    for cfg in [&v4, &v5] {
        assert_eq!((cfg.min_pixels, cfg.max_pixels), (3136, 200_704));
    }
    assert_eq!(v4, v5);
    // Neither file: the defaults, and the caller is told.
    let empty = tempfile::tempdir().unwrap();
    let (cfg, source) = PreprocessConfig::from_model_dir_with_source(empty.path()).unwrap();
    assert_eq!(source, ConfigSource::Defaults);
    assert_eq!(cfg, PreprocessConfig::default());
    // A processor_config.json without the section is an error naming it.
    std::fs::write(
        empty.path().join("processor_config.json"),
        r#"{"processor_class": "X"}"#,
    )
    .unwrap();
    let err = PreprocessConfig::from_model_dir(empty.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_processor"), "{err}");
}
