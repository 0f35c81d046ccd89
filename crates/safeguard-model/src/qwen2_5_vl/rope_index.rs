//! Multimodal position ids, a port of `Qwen2_5_VLModel.get_rope_index` (transformers 5.x) for
//! images and text.
//!
//! Text tokens get the same position on the three axes, counting up. A run of
//! `<|image_pad|>` tokens takes the next image grid `(t, h, w)` (in patches) and gets, for
//! each merged token, `(start + t_i, start + row, start + col)` over the `(t, h/m, w/m)` grid;
//! the text after it resumes at `start + max(h, w) / m`. The *rope delta* (`max position + 1 −
//! sequence length`) shifts the positions of generated tokens.

use crate::ModelError;

/// Position ids of one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// `[3][seq]`: temporal, height, width position of each token.
    pub positions: [Vec<i64>; 3],
    /// `max(position) + 1 − seq`: added to `cache length` for each later token.
    pub delta: i64,
}

/// Computes the M-RoPE position ids of `input_ids`, where each maximal run of
/// `image_token_id` consumes the next entry of `grids` (`(t, h, w)` in patches). Fails if the
/// runs and grids do not match one to one with `t·h·w / merge²` tokens each.
pub fn rope_index(
    input_ids: &[u32],
    image_token_id: u32,
    grids: &[[usize; 3]],
    spatial_merge_size: usize,
) -> Result<RopeIndex, ModelError> {
    let mut positions: [Vec<i64>; 3] = Default::default();
    let mut grids_iter = grids.iter();
    let mut current: i64 = 0;
    let mut i = 0;
    while i < input_ids.len() {
        if input_ids[i] != image_token_id {
            for axis in &mut positions {
                axis.push(current);
            }
            current += 1;
            i += 1;
            continue;
        }
        let run = input_ids[i..]
            .iter()
            .take_while(|&&t| t == image_token_id)
            .count();
        let &[t, h, w] = grids_iter.next().ok_or_else(|| ModelError::Input {
            reason: format!(
                "image-pad run at token {i} has no image grid left ({} grids given)",
                grids.len()
            ),
        })?;
        let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
        if run != t * lh * lw {
            return Err(ModelError::Input {
                reason: format!(
                    "image-pad run at token {i} has {run} tokens but grid {:?} needs {}",
                    [t, h, w],
                    t * lh * lw
                ),
            });
        }
        for ti in 0..t as i64 {
            for row in 0..lh as i64 {
                for col in 0..lw as i64 {
                    positions[0].push(current + ti);
                    positions[1].push(current + row);
                    positions[2].push(current + col);
                }
            }
        }
        current += lh.max(lw) as i64;
        i += run;
    }
    if grids_iter.next().is_some() {
        return Err(ModelError::Input {
            reason: format!(
                "{} image grids given but fewer image-pad runs in the input ids",
                grids.len()
            ),
        });
    }
    let max = positions
        .iter()
        .flat_map(|a| a.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok(RopeIndex {
        delta: max + 1 - input_ids.len() as i64,
        positions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_counts_up_with_zero_delta() {
        let r = rope_index(&[5, 6, 7], 9, &[], 2).unwrap();
        assert_eq!(r.positions[0], vec![0, 1, 2]);
        assert_eq!(r.positions, [vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(r.delta, 0);
    }

    #[test]
    fn image_block_uses_grid_and_text_resumes_after_longest_side() {
        // grid 4x6 patches -> 2x3 merged tokens.
        let ids = [1, 9, 9, 9, 9, 9, 9, 2];
        let r = rope_index(&ids, 9, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(r.positions[0], vec![0, 1, 1, 1, 1, 1, 1, 4]);
        assert_eq!(r.positions[1], vec![0, 1, 1, 1, 2, 2, 2, 4]);
        assert_eq!(r.positions[2], vec![0, 1, 2, 3, 1, 2, 3, 4]);
        assert_eq!(r.delta, 5 - 8);
    }

    #[test]
    fn mismatched_runs_and_grids_are_errors() {
        assert!(rope_index(&[9, 9], 9, &[[1, 4, 6]], 2).is_err());
        assert!(rope_index(&[1, 2], 9, &[[1, 2, 2]], 2).is_err());
        assert!(rope_index(&[9], 9, &[], 2).is_err());
    }
}
