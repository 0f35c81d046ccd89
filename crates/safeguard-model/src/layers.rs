//! Building blocks shared by the model code: RMSNorm, attention (eager or tiled with an online
//! softmax, [`AttentionMode`]), GQA head repetition and rotary embedding application.
//!
//! **One model, differentiable when it needs to be.** Inference uses candle's fused kernels
//! (`ops::rms_norm`, `rotary_emb::rope`, `ops::softmax_last_dim`), which record **no backward
//! op**: `backward()` through them succeeds and silently gives wrong gradients upstream. Every
//! call site goes through the functions here, and each picks a differentiable composite of
//! plain tensor ops when its input carries a graph (`Tensor::track_op()`: a `Var`, or computed
//! from one) and the fused kernel otherwise. Inference builds no graph, so it keeps the fused
//! kernels; training gets exact gradients from the same model code. The composites equal the
//! kernels in the forward pass (tests below) and central differences in the backward pass.
//!
//! [`linear`] is the frozen-weight matmul: with a graph on the input and a constant weight it
//! runs as a custom op whose backward returns only the input's gradient. Plain `matmul` would
//! make candle allocate and keep a weight-sized gradient for the constant weight as well (one
//! per projection per call), which is most of a LoRA step's memory at real sizes.
//!
//! Compute dtype: f16/bf16 are upcast to f32 for norms, softmax and RoPE (as transformers);
//! f32 and f64 are kept, so the whole model runs in f64 for finite-difference checks.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;

/// The dtype norms, softmax and RoPE are computed in for inputs of `dtype`: f32 for the
/// half-precision types, `dtype` itself otherwise (f32, f64).
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

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

impl RmsNorm {
    /// The weight `[size]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let compute = compute_dtype(dtype);
        let xs = xs.to_dtype(compute)?;
        let weight = self.inner.weight().to_dtype(compute)?;
        let eps = self.inner.eps();
        // The fused kernel has no backward and no f64 implementation.
        if xs.track_op() || weight.track_op() || compute == DType::F64 {
            return rms_norm_composite(&xs, &weight, eps)?.to_dtype(dtype);
        }
        candle_nn::ops::rms_norm(&xs.contiguous()?, &weight, eps as f32)?.to_dtype(dtype)
    }
}

/// `x / √(mean(x²) + eps) · w` over the last dimension, in plain (differentiable) ops.
fn rms_norm_composite(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (mean_sq + eps)?.sqrt()?.recip()?;
    xs.broadcast_mul(&inv)?.broadcast_mul(weight)
}

/// Softmax over the last dimension: the fused kernel, or with a graph on `xs` the composite
/// `exp(x − max x) / Σ exp(x − max x)` with the maximum detached (the softmax does not depend
/// on the shift, so the gradient is exact). Masked `−∞` entries give exactly 0 either way.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if !xs.track_op() {
        return candle_nn::ops::softmax_last_dim(xs);
    }
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// `x·Wᵀ` for `x` `[…, in]` and `W` `[out, in]`. With a graph on `x` and a constant `W` (a
/// frozen base weight) it runs as [`FrozenMatmul`], so the backward pass computes and keeps
/// only `x`'s gradient; otherwise it is candle's broadcast matmul (inference, or a trainable
/// `W`, whose gradient is then wanted).
pub fn linear(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if xs.track_op() && !weight.track_op() && FROZEN_MATMUL.load(Ordering::Relaxed) {
        return xs
            .contiguous()?
            .apply_op2(&weight.contiguous()?, FrozenMatmul);
    }
    // As candle_nn::Linear (bit-identical inference).
    let w = match *xs.dims() {
        [b1, b2, _, _] => weight.broadcast_left((b1, b2))?.t()?,
        [b, _, _] => weight.broadcast_left(b)?.t()?,
        _ => weight.t()?,
    };
    xs.matmul(&w)
}

static FROZEN_MATMUL: AtomicBool = AtomicBool::new(true);

/// Turns [`FrozenMatmul`] off (or back on) process-wide, so that frozen weights go through
/// candle's plain matmul and get their dead weight-sized gradients: only for measuring what
/// the custom op saves (`safeguard train bench --plain-matmul`). Gradients are the same
/// either way.
pub fn set_frozen_matmul(enabled: bool) {
    FROZEN_MATMUL.store(enabled, Ordering::Relaxed);
}

/// `x·Wᵀ` with the backward pass of `x` only (see [`linear`]): `x` contiguous `[…, in]`, `W`
/// `[out, in]`; the forward pass is one matmul on the raw storages, `∂x = ∂y·W`.
#[derive(Debug, Clone, Copy)]
pub struct FrozenMatmul;

impl FrozenMatmul {
    fn fwd<S: BackendStorage>(
        x: &S,
        x_layout: &Layout,
        w: &S,
        w_layout: &Layout,
    ) -> Result<(S, Shape)> {
        let (out_dim, in_dim) = w_layout.shape().dims2()?;
        let dims = x_layout.shape().dims();
        let Some((&k, batch)) = dims.split_last() else {
            candle_core::bail!("frozen linear: a 0-d input");
        };
        if k != in_dim {
            candle_core::bail!("frozen linear: input {dims:?} but weight [{out_dim}, {in_dim}]");
        }
        let Some((start, _)) = x_layout.contiguous_offsets() else {
            candle_core::bail!("frozen linear: the input must be contiguous");
        };
        if !w_layout.is_contiguous() {
            candle_core::bail!("frozen linear: the weight must be contiguous");
        }
        let m: usize = batch.iter().product();
        let lhs = Layout::contiguous_with_offset((m, k), start);
        let rhs = w_layout.transpose(0, 1)?;
        let y = x.matmul(w, (1, m, out_dim, k), &lhs, &rhs)?;
        let mut shape = batch.to_vec();
        shape.push(out_dim);
        Ok((y, Shape::from(shape)))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::fwd(x, x_layout, w, w_layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Self::fwd(x, x_layout, w, w_layout)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = grad_y.dims();
        let out_dim = w.dim(0)?;
        let rows = grad_y.elem_count() / out_dim.max(1);
        let grad_x = grad_y.reshape((rows, out_dim))?.matmul(w)?;
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(w.dim(1)?);
        Ok((Some(grad_x.reshape(shape)?), None))
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
    let compute = compute_dtype(dtype);
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(compute)?;
    let scores = match mask {
        Mask::None => scores,
        Mask::Causal { past } => {
            let mask = causal_mask(q.dim(2)?, past, q.device())?.to_dtype(compute)?;
            scores.broadcast_add(&mask)?
        }
    };
    let probs = softmax_last_dim(&scores)?.to_dtype(dtype)?;
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
/// Scores and the softmax are in [`compute_dtype`] as in the eager path; `p·v` runs in the
/// input dtype, as the eager path multiplies its probabilities cast back to that dtype. With a
/// graph on the inputs the running maxima are detached (exact: they only shift the exponents).
pub fn attention_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Mask,
    block: usize,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let compute = compute_dtype(dtype);
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
        let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (m, l, acc), compute dtype
        for k0 in (0..visible).step_by(block) {
            let kn = block.min(visible - k0);
            let kc = k.narrow(2, k0, kn)?.contiguous()?;
            let vc = v.narrow(2, k0, kn)?.contiguous()?;
            let mut scores = (qc.matmul(&kc.t()?)? * scale)?.to_dtype(compute)?;
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
                    let m = Tensor::from_vec(data, (qn, kn), q.device())?.to_dtype(compute)?;
                    scores = scores.broadcast_add(&m)?;
                }
            }
            let block_max = scores.max_keepdim(D::Minus1)?.detach();
            state = Some(match state {
                None => {
                    let p = scores.broadcast_sub(&block_max)?.exp()?;
                    let l = p.sum_keepdim(D::Minus1)?;
                    let acc = p.to_dtype(dtype)?.matmul(&vc)?.to_dtype(compute)?;
                    (block_max, l, acc)
                }
                Some((m, l, acc)) => {
                    let m_new = m.maximum(&block_max)?;
                    let p = scores.broadcast_sub(&m_new)?.exp()?;
                    let correction = (m - &m_new)?.exp()?;
                    let l = ((l * &correction)? + p.sum_keepdim(D::Minus1)?)?;
                    let pv = p.to_dtype(dtype)?.matmul(&vc)?.to_dtype(compute)?;
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
/// [`compute_dtype`] (f32 for half precision, like the reference): the fused kernel, or with a
/// graph on `xs` (or in f64) a composite of plain ops.
pub fn apply_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let compute = compute_dtype(dtype);
    let xs = xs.to_dtype(compute)?;
    let (cos, sin) = (cos.to_dtype(compute)?, sin.to_dtype(compute)?);
    if xs.track_op() || compute == DType::F64 {
        return rope_composite(&xs, &cos, &sin)?.to_dtype(dtype);
    }
    candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)?.to_dtype(dtype)
}

/// `x·[cos, cos] + rotate_half(x)·[sin, sin]` with `rotate_half(x) = [−x₂, x₁]` (the halves of
/// the last dimension). Tables `[seq, d/2]` broadcast over batch and heads, `[b, seq, d/2]`
/// over heads (candle's `rope_slow` would narrow the batch of a 3-D table instead).
fn rope_composite(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let table = |t: &Tensor| -> Result<Tensor> {
        let full = Tensor::cat(&[t, t], D::Minus1)?;
        match full.rank() {
            3 => full.unsqueeze(1),
            _ => Ok(full),
        }
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
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

    /// Relative difference `max |a − b| / max(1, max |b|)`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let scale = b
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .max(1.0);
        let d = (a - b).unwrap().abs().unwrap().max(0).unwrap();
        d.to_scalar::<f64>().unwrap() / scale
    }

    /// Checks the autograd gradient of `f` (tensor → tensor, reduced against fixed random
    /// weights to a scalar) at `x` (f64) against central differences, element by element.
    fn check_grad(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
        let x = x.to_dtype(DType::F64).unwrap();
        let probe = f(&x);
        let weights = tensor(99, (1, 1, 1, probe.elem_count()))
            .to_dtype(DType::F64)
            .unwrap()
            .reshape(probe.shape())
            .unwrap();
        let loss = |t: &Tensor| (f(t) * &weights).unwrap().sum_all().unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let store = loss(var.as_tensor()).backward().unwrap();
        let grad = store
            .get(var.as_tensor())
            .expect("a gradient reaches the input");
        let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let flat: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for j in 0..flat.len() {
            let at = |delta: f64| {
                let mut v = flat.clone();
                v[j] += delta;
                let t = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
                loss(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let err = (grad[j] - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < 1e-6,
                "element {j}: autograd {} vs numeric {numeric}",
                grad[j]
            );
        }
    }

    fn tracked(t: &Tensor) -> Tensor {
        candle_core::Var::from_tensor(t)
            .unwrap()
            .as_tensor()
            .clone()
    }

    #[test]
    fn composites_equal_the_fused_kernels() {
        let x = tensor(4, (2, 3, 5, 8));
        let w = tensor(5, (1, 1, 1, 8)).flatten_all().unwrap();
        let norm = RmsNorm {
            inner: candle_nn::RmsNorm::new(w.clone(), 1e-6),
        };
        let fused = norm.forward(&x).unwrap();
        let composite = norm.forward(&tracked(&x)).unwrap();
        assert!(composite.track_op(), "the tracked input took the composite");
        assert!(rel_diff(&composite, &fused) < 1e-6);

        let fused = softmax_last_dim(&x).unwrap();
        let composite = softmax_last_dim(&tracked(&x)).unwrap();
        assert!(composite.track_op());
        assert!(rel_diff(&composite, &fused) < 1e-6);

        // RoPE with 2-D and with 3-D (per-row, M-RoPE) tables.
        let angles2 = tensor(6, (1, 1, 5, 4));
        let angles2 = angles2.squeeze(0).unwrap().squeeze(0).unwrap();
        let angles3 = tensor(7, (1, 2, 5, 4)).squeeze(0).unwrap();
        for angles in [angles2, angles3] {
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let fused = apply_rope(&x, &cos, &sin).unwrap();
            let composite = apply_rope(&tracked(&x), &cos, &sin).unwrap();
            assert!(composite.track_op());
            assert!(rel_diff(&composite, &fused) < 1e-6, "{:?}", cos.dims());
        }

        // The frozen matmul equals the plain one, batched or not.
        let weight = tensor(8, (1, 1, 6, 8))
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        for input in [
            x.clone(),
            x.flatten_to(2).unwrap(),
            x.flatten_to(1).unwrap(),
        ] {
            let plain = linear(&input, &weight).unwrap();
            let frozen = linear(&tracked(&input), &weight).unwrap();
            assert_eq!(plain.dims(), frozen.dims());
            assert!(rel_diff(&frozen, &plain) < 1e-6);
        }
    }

    #[test]
    fn composite_gradients_match_central_differences() {
        let x = tensor(11, (1, 2, 3, 4));
        let w = tensor(12, (1, 1, 1, 4)).flatten_all().unwrap();
        let norm = RmsNorm {
            inner: candle_nn::RmsNorm::new(w.to_dtype(DType::F64).unwrap(), 1e-6),
        };
        check_grad(&x, |t| norm.forward(t).unwrap());
        check_grad(&x, |t| softmax_last_dim(t).unwrap());
        let angles3 = tensor(13, (1, 1, 3, 2)).squeeze(0).unwrap();
        let angles2 = angles3.squeeze(0).unwrap();
        for angles in [angles2, angles3] {
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            check_grad(&x, |t| apply_rope(t, &cos, &sin).unwrap());
        }
        let weight = tensor(14, (1, 1, 5, 4))
            .to_dtype(DType::F64)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        check_grad(&x, |t| linear(t, &weight).unwrap());
        // Attention, eager and tiled, causal and not: gradient with respect to q, k and v.
        let kv = tensor(15, (1, 2, 3, 4)).to_dtype(DType::F64).unwrap();
        for mode in [AttentionMode::Eager, AttentionMode::Tiled { block: 2 }] {
            for mask in [Mask::None, Mask::Causal { past: 0 }] {
                check_grad(&x, |q| attention(q, &kv, &kv, mask, mode).unwrap());
                let q = x.to_dtype(DType::F64).unwrap();
                check_grad(&x, |k| attention(&q, k, &kv, mask, mode).unwrap());
                check_grad(&x, |v| attention(&q, &kv, v, mask, mode).unwrap());
            }
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_tensor() {
        let x = tracked(&tensor(21, (1, 2, 3, 4)));
        let weight = tensor(22, (1, 1, 5, 4))
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let store = linear(&x, &weight)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(store.get(&x).is_some());
        assert!(
            store.get(&weight).is_none(),
            "no weight-sized gradient for a constant"
        );
        // Plain matmul keeps one (the dead gradient this op exists to avoid).
        let operand = weight.t().unwrap().broadcast_left((1, 2)).unwrap();
        let store = x
            .matmul(&operand)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(store.get(&operand).is_some());
        // And the fused kernels alone would cut the graph: their output records no op.
        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!(!fused.track_op(), "candle's fused softmax has no backward");
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
