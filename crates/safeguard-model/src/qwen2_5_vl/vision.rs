//! The Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`).
//!
//! Patches of `C × T × P × P` values (1176 for 3 channels, 2 frames, 14 px) are embedded by a
//! 3-D convolution whose stride equals its kernel, computed here as one matmul. A 2-D rotary
//! embedding encodes each patch's (row, column). Most blocks attend inside windows of
//! `window_size` pixels (112 → 8 × 8 patches); the blocks in `fullatt_block_indexes` attend over
//! the whole image. The tokens are reordered window by window before the blocks (the *window
//! index*) and restored after the patch merger (the *reverse index*), which RMS-normalises and
//! concatenates each 2 × 2 group of patches and projects it to the LLM width.
//!
//! The index arithmetic ([`vision_position_ids`], [`window_index`], [`image_seqlens`]) is
//! plain integer code, unit-tested against values from transformers.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear, Activation, Linear, VarBuilder};

use super::config::VisionConfig;
use crate::layers::{apply_rope, attention, AttentionMode, Mask, RmsNorm};
use crate::lora::LoraLinear;

/// Pixel input of the vision tower: all images' patches concatenated, in the processor's
/// order (each image's patches grouped by 2 × 2 merge block).
#[derive(Debug, Clone)]
pub struct VisionInputs {
    /// `[total_patches, C·T·P·P]` (1176 values per patch for the released checkpoints).
    pub pixel_values: Tensor,
    /// Per image: (frames / temporal_patch, rows, columns), in patches.
    pub grid_thw: Vec<[usize; 3]>,
}

/// Per-patch (row, column) in patches, block-major over `merge × merge` blocks, like
/// `get_vision_position_ids` in transformers. Frames repeat the same positions.
pub fn vision_position_ids(grid_thw: &[[usize; 3]], merge: usize) -> Vec<[u32; 2]> {
    let mut out = Vec::new();
    for &[t, h, w] in grid_thw {
        let mut frame = Vec::with_capacity(h * w);
        for bh in 0..h / merge {
            for bw in 0..w / merge {
                for ih in 0..merge {
                    for iw in 0..merge {
                        frame.push([(bh * merge + ih) as u32, (bw * merge + iw) as u32]);
                    }
                }
            }
        }
        for _ in 0..t {
            out.extend_from_slice(&frame);
        }
    }
    out
}

/// Window order of the merged tokens and cumulative window lengths in patches, like
/// `get_vision_window_index`: each image's merged-token grid is padded to whole windows of
/// `window_size / merge / patch` tokens per side, windows are read row by row, and empty
/// windows are dropped.
pub fn window_index(grid_thw: &[[usize; 3]], cfg: &VisionConfig) -> (Vec<u32>, Vec<usize>) {
    let merge = cfg.spatial_merge_size;
    let win = cfg.window_size / merge / cfg.patch_size;
    let unit = merge * merge;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut offset = 0usize;
    for &[t, h, w] in grid_thw {
        let (lh, lw) = (h / merge, w / merge);
        let (nwh, nww) = (lh.div_ceil(win), lw.div_ceil(win));
        for ti in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * win..((wy + 1) * win).min(lh) {
                        for x in wx * win..((wx + 1) * win).min(lw) {
                            index.push((offset + ti * lh * lw + y * lw + x) as u32);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        cu.push(cu.last().copied().unwrap_or(0) + count * unit);
                    }
                }
            }
        }
        offset += t * lh * lw;
    }
    (index, cu)
}

/// Cumulative patch counts of the full-attention segments: one per frame of each image.
pub fn image_seqlens(grid_thw: &[[usize; 3]]) -> Vec<usize> {
    let mut cu = vec![0usize];
    for &[t, h, w] in grid_thw {
        for _ in 0..t {
            cu.push(cu.last().copied().unwrap_or(0) + h * w);
        }
    }
    cu
}

/// `patch_embed.proj`: Conv3d with kernel = stride = (T, P, P) and no bias, as a matmul.
#[derive(Debug, Clone)]
struct PatchEmbed {
    /// `[C·T·P·P, hidden]`.
    weight_t: Tensor,
}

impl PatchEmbed {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let shape = (
            cfg.hidden_size,
            cfg.in_channels,
            cfg.temporal_patch_size,
            cfg.patch_size,
            cfg.patch_size,
        );
        let weight = vb.get(shape, "proj.weight")?;
        let weight_t = weight
            .reshape((cfg.hidden_size, cfg.patch_dim()))?
            .t()?
            .contiguous()?;
        Ok(Self { weight_t })
    }
}

impl Module for PatchEmbed {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.to_dtype(self.weight_t.dtype())?.matmul(&self.weight_t)
    }
}

/// SwiGLU MLP with biases (`gate_proj`, `up_proj`, `down_proj`).
#[derive(Debug, Clone)]
struct VisionMlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
    act: Activation,
}

impl VisionMlp {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: LoraLinear::new(h, i, true, vb.pp("gate_proj"))?,
            up_proj: LoraLinear::new(h, i, true, vb.pp("up_proj"))?,
            down_proj: LoraLinear::new(i, h, true, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for VisionMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

/// Multi-head self-attention over segments given by cumulative lengths (windows or images).
#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: LoraLinear,
    proj: LoraLinear,
    num_heads: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: LoraLinear::new(h, 3 * h, true, vb.pp("qkv"))?,
            proj: LoraLinear::new(h, h, true, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cu_seqlens: &[usize],
        rope: &VisionRope,
        mode: AttentionMode,
    ) -> Result<Tensor> {
        let (seq, hidden) = xs.dims2()?;
        let qkv =
            self.qkv
                .forward(xs)?
                .reshape((seq, 3, self.num_heads, hidden / self.num_heads))?;
        // [3, 1, heads, seq, head_dim]
        let qkv = qkv.permute((1, 2, 0, 3))?.unsqueeze(1)?;
        let q = apply_rope(&qkv.get(0)?, &rope.cos, &rope.sin)?;
        let k = apply_rope(&qkv.get(1)?, &rope.cos, &rope.sin)?;
        let v = qkv.get(2)?;
        let mut outputs = Vec::with_capacity(cu_seqlens.len());
        for pair in cu_seqlens.windows(2) {
            let (start, len) = (pair[0], pair[1] - pair[0]);
            let out = attention(
                &q.narrow(2, start, len)?,
                &k.narrow(2, start, len)?,
                &v.narrow(2, start, len)?,
                Mask::None,
                mode,
            )?;
            outputs.push(out);
        }
        // [1, heads, seq, head_dim] → [seq, hidden]
        let out = Tensor::cat(&outputs, 2)?
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((seq, hidden))?;
        self.proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("norm1"))?,
            norm2: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn linears_mut(&mut self) -> [&mut LoraLinear; 5] {
        let (a, m) = (&mut self.attn, &mut self.mlp);
        [
            &mut a.qkv,
            &mut a.proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    fn forward(
        &self,
        xs: &Tensor,
        cu_seqlens: &[usize],
        rope: &VisionRope,
        mode: AttentionMode,
    ) -> Result<Tensor> {
        let xs = (xs
            + self
                .attn
                .forward(&self.norm1.forward(xs)?, cu_seqlens, rope, mode)?)?;
        &xs + self.mlp.forward(&self.norm2.forward(&xs)?)?
    }
}

/// `merger`: RMSNorm, then groups of `merge²` patches concatenated and projected by
/// `Linear → GELU(erf) → Linear` to the LLM width.
#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    group_width: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let group_width = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("ln_q"))?,
            fc1: linear(group_width, group_width, vb.pp("mlp.0"))?,
            fc2: linear(group_width, cfg.out_hidden_size, vb.pp("mlp.2"))?,
            group_width,
        })
    }
}

impl Module for PatchMerger {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.ln_q.forward(xs)?.reshape(((), self.group_width))?;
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}

/// cos/sin `[seq, head_dim / 2]` (f32) of the 2-D rotary embedding, already in window order.
#[derive(Debug, Clone)]
struct VisionRope {
    cos: Tensor,
    sin: Tensor,
}

impl VisionRope {
    /// Angles `[row·f, col·f]` with `f = θ^(-2j / (head_dim/2))`, `j < head_dim/4`, for the
    /// given per-patch positions.
    fn new(cfg: &VisionConfig, positions: &[[u32; 2]], device: &Device) -> Result<Self> {
        let quarter = cfg.head_dim() / 4;
        let half = cfg.head_dim() / 2;
        let theta = cfg.rope_theta();
        let inv_freq: Vec<f64> = (0..quarter)
            .map(|j| 1.0 / theta.powf((2 * j) as f64 / half as f64))
            .collect();
        let mut angles = Vec::with_capacity(positions.len() * half);
        for &[row, col] in positions {
            angles.extend(inv_freq.iter().map(|f| (row as f64 * f) as f32));
            angles.extend(inv_freq.iter().map(|f| (col as f64 * f) as f32));
        }
        let angles = Tensor::from_vec(angles, (positions.len(), half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }
}

/// The vision tower: pixel patches → one embedding of the LLM width per merged 2 × 2 group.
#[derive(Debug, Clone)]
pub struct VisionModel {
    patch_embed: PatchEmbed,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
    attention: AttentionMode,
}

impl VisionModel {
    /// Loads the tower from `vb` positioned at `visual` (or `model.visual`).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed"))?,
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"))?,
            cfg: cfg.clone(),
            attention: AttentionMode::default(),
        })
    }

    /// How the blocks compute attention (a full-attention block over a large image needs the
    /// tiled path: its scores grow with the square of the patch count).
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.attention = mode;
    }

    /// Embeds all images: `[Σ t·h·w / merge², out_hidden_size]`, images concatenated in order.
    pub fn forward(&self, inputs: &VisionInputs) -> Result<Tensor> {
        let _span = tracing::trace_span!("vision_forward").entered();
        let cfg = &self.cfg;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let expected: usize = inputs.grid_thw.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let (patches, width) = inputs.pixel_values.dims2()?;
        if patches != expected || width != cfg.patch_dim() {
            candle_core::bail!(
                "pixel_values is [{patches}, {width}] but grid_thw {:?} needs [{expected}, {}]",
                inputs.grid_thw,
                cfg.patch_dim()
            );
        }
        if inputs.grid_thw.iter().any(|g| {
            !g[1].is_multiple_of(cfg.spatial_merge_size)
                || !g[2].is_multiple_of(cfg.spatial_merge_size)
        }) {
            candle_core::bail!(
                "grid_thw {:?}: rows and columns must be multiples of {}",
                inputs.grid_thw,
                cfg.spatial_merge_size
            );
        }
        let device = inputs.pixel_values.device();
        let (win_index, cu_window) = window_index(&inputs.grid_thw, cfg);
        let cu_full = image_seqlens(&inputs.grid_thw);
        // Patch-level permutation into window order.
        let patch_order: Vec<u32> = win_index
            .iter()
            .flat_map(|&w| (0..unit as u32).map(move |k| w * unit as u32 + k))
            .collect();
        let positions = vision_position_ids(&inputs.grid_thw, cfg.spatial_merge_size);
        let positions: Vec<[u32; 2]> = patch_order.iter().map(|&i| positions[i as usize]).collect();
        let rope = VisionRope::new(cfg, &positions, device)?;
        let patch_order = Tensor::from_vec(patch_order, expected, device)?;
        let mut xs = self
            .patch_embed
            .forward(&inputs.pixel_values)?
            .index_select(&patch_order, 0)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let cu = if cfg.fullatt_block_indexes.contains(&i) {
                &cu_full
            } else {
                &cu_window
            };
            xs = block.forward(&xs, cu, &rope, self.attention)?;
        }
        let merged = self.merger.forward(&xs)?;
        let mut reverse = vec![0u32; win_index.len()];
        for (pos, &w) in win_index.iter().enumerate() {
            reverse[w as usize] = pos as u32;
        }
        let reverse = Tensor::from_vec(reverse, win_index.len(), device)?;
        merged.index_select(&reverse, 0)
    }

    /// The LoRA-capable projections of every block (attention `qkv`/`proj`, MLP).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.blocks.iter_mut().flat_map(VisionBlock::linears_mut)
    }

    /// Merged tokens (= `<|image_pad|>` count) an image of this grid produces.
    pub fn tokens_for_grid(&self, grid: [usize; 3]) -> usize {
        grid[0] * grid[1] * grid[2] / (self.cfg.spatial_merge_size * self.cfg.spatial_merge_size)
    }

    /// dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.patch_embed.weight_t.dtype()
    }
}
