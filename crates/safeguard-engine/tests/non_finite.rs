//! A guard fails closed on numbers: a copy of the tiny trained checkpoint with a NaN or an
//! infinite weight planted in it (a corrupt file, or what an f16 overflow leaves) must give
//! errors, never a verdict, in every mode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safeguard_core::guard::{judge_checked, Guard, GuardRequest};
use safeguard_core::policy::presets;
use safeguard_core::prompt::Format;
use safeguard_core::{Error, Policy};
use safeguard_engine::chat::{ChatMessage, ChatPart, ChatRequest, Role};
use safeguard_engine::{LocalGuard, LocalGuardOptions};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

/// A copy of the tiny guard in `dir` whose tensor `name` has `value` written into its first
/// element.
fn planted(dir: &Path, name: &str, value: f32) {
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let t = &tensors[name];
    let shape = t.shape().clone();
    let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    data[0] = value;
    tensors.insert(
        name.to_string(),
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn judge_all(guard: &LocalGuard, policy: &Policy, format: Format) -> Vec<Result<(), Error>> {
    let image = std::fs::read(fixture().join("image-a.png")).unwrap();
    let request = GuardRequest {
        image: &image,
        policy,
        format,
        threshold: 0.5,
    };
    // Through the trait directly and through the checked call every front end uses.
    let direct = guard.judge(&[request, request]);
    let checked = judge_checked(guard, &[request]);
    direct
        .into_iter()
        .chain(checked)
        .map(|r| r.map(|j| panic!("{format}: a verdict from a broken model: {j:?}")))
        .collect()
}

#[test]
fn planted_nan_and_overflow_give_errors_in_every_mode() {
    let l3 = presets::get("L3").unwrap();
    let free_text =
        Policy::from_text("free", "No photos of weapons or of people smoking.").unwrap();
    for (tensor, value) in [
        ("model.norm.weight", f32::NAN),
        ("visual.merger.mlp.2.weight", f32::INFINITY),
    ] {
        let dir = tempfile::tempdir().unwrap();
        planted(dir.path(), tensor, value);
        let guard = LocalGuard::load(dir.path(), LocalGuardOptions::default()).unwrap();
        for (policy, format) in [
            (&l3, Format::Verdict),        // whole policy + rule questions
            (&free_text, Format::Verdict), // the batched score path
            (&l3, Format::Reasoning),
            (&l3, Format::Json),
        ] {
            for result in judge_all(&guard, policy, format) {
                match result {
                    Err(Error::NonFinite { backend, what, .. }) => {
                        assert_eq!(backend, "local");
                        assert!(what.contains("logit"), "{what}");
                    }
                    other => panic!("{tensor}={value} {format}: {other:?}"),
                }
            }
        }
        // Chat refuses to turn NaN logits into tokens too.
        let image = std::fs::read(fixture().join("image-a.png")).unwrap();
        let req = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                parts: vec![ChatPart::Image(image), ChatPart::Text("safe?".into())],
            }],
            max_tokens: 4,
            ..Default::default()
        };
        let err = guard.chat(&req, |_| {}).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }
}
