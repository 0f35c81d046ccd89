//! Building blocks shared by the model code: RMSNorm, attention (eager or tiled with an online
//! softmax, [`AttentionMode`]), GQA head repetition and rotary embedding application.
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

/// How attention is computed. Both give the same result up to f32 rounding; they differ in
/// memory. The mode is a property of a run, not of the checkpoint, so it lives here and is
/// threaded through the forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// Eager while the scores of one call fit in [`AUTO_SCORE_BYTES`], tiled beyond.
    #[default]
    Auto,
    /// Always materialise the whole `[heads, q, k]` score matrix (transformers' eager path).
    Eager,
    /// Always tiled, `block` queries × `block` keys at a time (see [`attention_tiled`]).
    Tiled {
        /// Side of a tile (queries and keys per block).
        block: usize,
    },
}

/// Largest f32 score matrix (bytes) [`AttentionMode::Auto`] lets the eager path build: 64 MiB,
/// e.g. 16 heads × 1024 × 1024. Above it the tiled path runs, whose scratch memory does not
/// grow with the sequence.
pub const AUTO_SCORE_BYTES: usize = 64 << 20;

/// Tile side of [`AttentionMode::Auto`] when it tiles.
pub const AUTO_BLOCK: usize = 512;

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key (vision segments).
    None,
    /// Causal: query `i` (at absolute position `past + i`) sees keys `0..=past + i`; the keys
    /// are the `past` cached tokens followed by the queries' own.
    Causal {
        /// Tokens before the first query.
        past: usize,
    },
}

/// Scaled dot-product attention on `[b, heads, q_len, d]` / `[b, heads, kv_len, d]`, softmax in
/// f32 like transformers' eager path, computed as `mode` says.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Mask,
    mode: AttentionMode,
) -> Result<Tensor> {
    let (b, heads, q_len, _) = q.dims4()?;
    let kv_len = k.dim(2)?;
    let block = match mode {
        AttentionMode::Eager => None,
        AttentionMode::Tiled { block } => Some(block.max(1)),
        AttentionMode::Auto => {
            let bytes = b * heads * q_len * kv_len * 4;
            (bytes > AUTO_SCORE_BYTES).then_some(AUTO_BLOCK)
        }
    };
    #[cfg(feature = "flash-attn")]
    if mode != AttentionMode::Eager
        && q.device().is_cuda()
        && matches!(q.dtype(), DType::F16 | DType::BF16)
    {
        return attention_flash(q, k, v, mask);
    }
    match block {
        None => attention_eager(q, k, v, mask),
        Some(block) => attention_tiled(q, k, v, mask, block),
    }
}

/// candle's FlashAttention-2 kernel (CUDA, f16/bf16; the `flash-attn` feature), used by
/// [`AttentionMode::Auto`] and `Tiled` whenever it applies. It takes `[b, seq, heads, d]`, and
/// its causal mask is aligned to the bottom right (query `i` sees keys up to
/// `kv_len − q_len + i`), which is [`Mask::Causal`] with `past = kv_len − q_len`.
/// Not yet built or run in this project: no machine here has nvcc or a GPU.
#[cfg(feature = "flash-attn")]
fn attention_flash(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f32).sqrt();
    let causal = match mask {
        Mask::None => false,
        Mask::Causal { past } => {
            if past + q.dim(2)? != k.dim(2)? {
                candle_core::bail!("flash attention: the causal mask needs kv_len = past + q_len");
            }
            true
        }
    };
    let (q, k, v) = (
        q.transpose(1, 2)?.contiguous()?,
        k.transpose(1, 2)?.contiguous()?,
        v.transpose(1, 2)?.contiguous()?,
    );
    candle_flash_attn::flash_attn(&q, &k, &v, scale, causal)?.transpose(1, 2)
}

/// The whole score matrix at once (transformers' eager attention).
fn attention_eager(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask) -> Result<Tensor> {
    let dtype = q.dtype();
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Mask::None => scores,
        Mask::Causal { past } => {
            let mask = causal_mask(q.dim(2)?, past, q.device())?;
            scores.broadcast_add(&mask)?
        }
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Memory-efficient attention: the queries in blocks of `block`, and for each block the keys
/// in blocks of `block` with an online softmax (the running maximum `m`, normaliser `l` and
/// unnormalised output `acc` of every query row are rescaled by `exp(m_old − m_new)` as each
/// key block arrives; Milakov & Gimelshein 2018, the forward pass of FlashAttention). Scratch
/// memory is `b × heads × block × block` f32 scores whatever the sequence length; the result
/// equals [`attention`]'s eager path up to f32 rounding (the sums are taken in another order).
///
/// Under the causal mask, key blocks entirely after a query block are skipped, and only the
/// blocks that straddle the diagonal get a mask. Every query row sees key 0 first, so `m` is
/// finite after the first block and a fully masked row of a later block adds exactly zero.
/// Scores and the softmax are f32 as in the eager path; `p·v` runs in the input dtype, as the
/// eager path multiplies its probabilities cast back to that dtype.
pub fn attention_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Mask,
    block: usize,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let (_, _, q_len, d) = q.dims4()?;
    let kv_len = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let past = match mask {
        Mask::None => None,
        Mask::Causal { past } => Some(past),
    };
    let mut outputs = Vec::with_capacity(q_len.div_ceil(block));
    for q0 in (0..q_len).step_by(block) {
        let qn = block.min(q_len - q0);
        let qc = q.narrow(2, q0, qn)?.contiguous()?;
        // Keys any query of this block may see.
        let visible = match past {
            None => kv_len,
            Some(past) => (past + q0 + qn).min(kv_len),
        };
        let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (m, l, acc), f32
        for k0 in (0..visible).step_by(block) {
            let kn = block.min(visible - k0);
            let kc = k.narrow(2, k0, kn)?.contiguous()?;
            let vc = v.narrow(2, k0, kn)?.contiguous()?;
            let mut scores = (qc.matmul(&kc.t()?)? * scale)?.to_dtype(DType::F32)?;
            if let Some(past) = past {
                // The last query of the block sees every key of this block iff its first query
                // does; otherwise mask the part above the diagonal.
                if k0 + kn > past + q0 + 1 {
                    let data: Vec<f32> = (0..qn)
                        .flat_map(|i| {
                            (0..kn).map(move |j| {
                                if k0 + j > past + q0 + i {
                                    f32::NEG_INFINITY
                                } else {
                                    0.0
                                }
                            })
                        })
                        .collect();
                    let m = Tensor::from_vec(data, (qn, kn), q.device())?;
                    scores = scores.broadcast_add(&m)?;
                }
            }
            let block_max = scores.max_keepdim(D::Minus1)?;
            state = Some(match state {
                None => {
                    let p = scores.broadcast_sub(&block_max)?.exp()?;
                    let l = p.sum_keepdim(D::Minus1)?;
                    let acc = p.to_dtype(dtype)?.matmul(&vc)?.to_dtype(DType::F32)?;
                    (block_max, l, acc)
                }
                Some((m, l, acc)) => {
                    let m_new = m.maximum(&block_max)?;
                    let p = scores.broadcast_sub(&m_new)?.exp()?;
                    let correction = (m - &m_new)?.exp()?;
                    let l = ((l * &correction)? + p.sum_keepdim(D::Minus1)?)?;
                    let pv = p.to_dtype(dtype)?.matmul(&vc)?.to_dtype(DType::F32)?;
                    let acc = (acc.broadcast_mul(&correction)? + pv)?;
                    (m_new, l, acc)
                }
            });
        }
        let (_, l, acc) = state.expect("every query block sees at least one key");
        outputs.push(acc.broadcast_div(&l)?.to_dtype(dtype)?);
    }
    Tensor::cat(&outputs, 2)
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

    /// Deterministic pseudo-random `[b, heads, n, d]` with values of a few units (large enough
    /// that the softmax is far from uniform).
    fn tensor(seed: u64, shape: (usize, usize, usize, usize)) -> Tensor {
        let count = shape.0 * shape.1 * shape.2 * shape.3;
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..count)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn tiled_attention_equals_eager_attention() {
        // (queries, past, block): blocks that divide the sequence, that do not, of one token,
        // larger than the sequence; with and without cached keys.
        for (q_len, past, block) in [
            (17, 0, 4),
            (17, 0, 1),
            (16, 0, 8),
            (9, 5, 4),
            (1, 12, 3),
            (33, 0, 64),
            (40, 7, 6),
        ] {
            let kv = past + q_len;
            let q = tensor(1, (2, 3, q_len, 8));
            let k = tensor(2, (2, 3, kv, 8));
            let v = tensor(3, (2, 3, kv, 8));
            for mask in [Mask::None, Mask::Causal { past }] {
                if mask == Mask::None && past > 0 {
                    continue;
                }
                let eager = attention(&q, &k, &v, mask, AttentionMode::Eager).unwrap();
                let tiled = attention(&q, &k, &v, mask, AttentionMode::Tiled { block }).unwrap();
                assert_eq!(eager.dims(), tiled.dims());
                let diff = max_abs_diff(&eager, &tiled);
                assert!(diff < 2e-5, "{q_len} {past} {block} {mask:?}: {diff}");
            }
        }
    }

    #[test]
    fn a_wrong_mask_would_be_seen() {
        // The comparison above can fail: causal and unmasked attention differ.
        let q = tensor(1, (1, 2, 6, 4));
        let k = tensor(2, (1, 2, 6, 4));
        let v = tensor(3, (1, 2, 6, 4));
        let causal = attention(
            &q,
            &k,
            &v,
            Mask::Causal { past: 0 },
            AttentionMode::Tiled { block: 2 },
        )
        .unwrap();
        let full = attention(&q, &k, &v, Mask::None, AttentionMode::Eager).unwrap();
        assert!(max_abs_diff(&causal, &full) > 0.1);
    }

    #[test]
    fn auto_tiles_only_large_score_matrices() {
        let q = tensor(1, (1, 1, 4, 4));
        let auto = attention(&q, &q, &q, Mask::None, AttentionMode::Auto).unwrap();
        let eager = attention(&q, &q, &q, Mask::None, AttentionMode::Eager).unwrap();
        // Below the threshold Auto is the eager path itself: bit-identical.
        assert_eq!(max_abs_diff(&auto, &eager), 0.0);
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
