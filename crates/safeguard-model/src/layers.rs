//! Building blocks shared by the model code: RMSNorm, eager attention, GQA head repetition and
//! rotary embedding application.
//!
//! Inference uses candle's fused kernels (`ops::rms_norm`, `rotary_emb::rope`,
//! `ops::softmax_last_dim`), which carry **no gradient**. Every call site goes through the
//! functions here, so a training path only has to switch these to their differentiable variants
//! (`rms_norm_slow`/`RmsNorm::forward_diff`, `rope_slow`, `ops::softmax`); that switch is not
//! implemented yet.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Root-mean-square norm computed in f32 and multiplied by the weight, like
/// `Qwen2_5_VLRMSNorm`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    inner: candle_nn::RmsNorm,
}

impl RmsNorm {
    /// Loads `weight` of shape `[size]` from `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::rms_norm(size, eps, vb)?,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        let weight = self.inner.weight().to_dtype(DType::F32)?;
        candle_nn::ops::rms_norm(&xs, &weight, self.inner.eps() as f32)?.to_dtype(dtype)
    }
}

/// Repeats each key/value head `n_rep` times along dim 1 (`[b, kv_heads, s, d]` →
/// `[b, kv_heads × n_rep, s, d]`), like `repeat_kv` in transformers.
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, kv_heads, seq, dim) = xs.dims4()?;
    xs.unsqueeze(2)?
        .expand((b, kv_heads, n_rep, seq, dim))?
        .reshape((b, kv_heads * n_rep, seq, dim))
}

/// Scaled dot-product attention on `[b, heads, q_len, d]` / `[b, heads, kv_len, d]`, softmax in
/// f32 like transformers' eager path. `mask` is added to the scores (`-inf` where masked) and
/// broadcast over batch and heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let dtype = q.dtype();
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Applies the non-interleaved rotary embedding (`x·cos + rotate_half(x)·sin`) to
/// `[b, heads, seq, d]` with `cos`/`sin` of shape `[seq, d/2]` or `[b, seq, d/2]`. Computed in
/// f32, like the reference.
pub fn apply_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::rotary_emb::rope(&xs, cos, sin)?.to_dtype(dtype)
}

/// Additive causal mask `[q_len, past + q_len]`: query `i` (at absolute position `past + i`)
/// sees keys `0..=past + i`.
pub fn causal_mask(q_len: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let kv_len = past + q_len;
    let data: Vec<f32> = (0..q_len)
        .flat_map(|i| (0..kv_len).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (q_len, kv_len), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn causal_mask_allows_past_and_self_only() {
        let m = causal_mask(2, 1, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn repeat_kv_repeats_each_head_in_place() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 1))
            .unwrap();
        let r = repeat_kv(x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}
