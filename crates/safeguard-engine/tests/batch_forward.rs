//! `forward_last_batch` against per-row `forward` on the tiny checkpoints: rows of different
//! lengths, with zero, one and two images, after a shared cached prefix and without one.

use candle_core::Tensor;
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, Qwen2_5VlModel, VisionInputs};

use crate::common::{fixtures, rel_max_diff};
use crate::parity::read_case;

/// Bound on `max |Δ| / range` between a batched row and the same row run alone (f32, CPU).
const BATCH_TOL: f32 = 1e-5;
/// The shared prefix (a stand-in for a rendered policy): text tokens below the specials.
const PREFIX: [u32; 7] = [11, 45, 270, 3, 99, 180, 7];

/// One sequence: token ids, image grids and its images' pixels (`None` for text only).
struct Row {
    ids: Vec<u32>,
    grids: Vec<[usize; 3]>,
    pixels: Option<Tensor>,
}

fn load(variant: &str) -> Qwen2_5VlModel {
    load_model(&fixtures().join(variant), &LoadOptions::default())
        .unwrap()
        .model
}

/// The four recorded cases plus two short text rows, each after `prefix`.
fn rows(variant: &str, prefix: &[u32]) -> Vec<Row> {
    let cases = fixtures().join(variant).join("cases");
    let mut rows: Vec<Row> = ["one_image", "text", "two_images", "window_pad"]
        .iter()
        .map(|case| {
            let c = read_case(&cases.join(case));
            Row {
                ids: [prefix, &c.ids].concat(),
                grids: c.grids,
                pixels: c.pixels,
            }
        })
        .collect();
    for tail in [&[42u32][..], &[5, 17, 300]] {
        rows.insert(
            1,
            Row {
                ids: [prefix, tail].concat(),
                grids: Vec::new(),
                pixels: None,
            },
        );
    }
    rows
}

fn embed(model: &Qwen2_5VlModel, pixels: &Tensor, grids: &[[usize; 3]]) -> Tensor {
    model
        .embed_images(&VisionInputs {
            pixel_values: pixels.clone(),
            grid_thw: grids.to_vec(),
        })
        .unwrap()
}

/// Image embeddings of every row from ONE vision-tower call over all rows' images, split back
/// into rows (`None` for a text-only row).
fn embed_all(model: &Qwen2_5VlModel, rows: &[Row]) -> Vec<Option<Tensor>> {
    let pixels: Vec<&Tensor> = rows.iter().filter_map(|r| r.pixels.as_ref()).collect();
    let grids: Vec<[usize; 3]> = rows.iter().flat_map(|r| r.grids.clone()).collect();
    let all = embed(model, &Tensor::cat(&pixels, 0).unwrap(), &grids);
    let mut start = 0;
    rows.iter()
        .map(|r| {
            r.pixels.as_ref()?;
            let n: usize = r.grids.iter().map(|&g| model.image_tokens(g)).sum();
            start += n;
            Some(all.narrow(0, start - n, n).unwrap())
        })
        .collect()
}

fn prompts<'a>(rows: &'a [Row], embeds: &'a [Option<Tensor>]) -> Vec<Prompt<'a>> {
    rows.iter()
        .zip(embeds)
        .map(|(r, e)| Prompt {
            input_ids: &r.ids,
            grids: &r.grids,
            image_embeds: e.as_ref(),
        })
        .collect()
}

/// Last-token logits of `row` run alone from an empty cache, its images embedded alone.
fn alone(model: &Qwen2_5VlModel, row: &Row) -> Tensor {
    let embeds = row.pixels.as_ref().map(|p| embed(model, p, &row.grids));
    let prompt = Prompt {
        input_ids: &row.ids,
        grids: &row.grids,
        image_embeds: embeds.as_ref(),
    };
    model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)
        .unwrap()
}

/// The prefix's cache, batch 1 (empty for an empty prefix).
fn prefix_cache(model: &Qwen2_5VlModel, prefix: &[u32]) -> KvCache {
    let mut cache = KvCache::new();
    if !prefix.is_empty() {
        let prompt = Prompt {
            input_ids: prefix,
            grids: &[],
            image_embeds: None,
        };
        model.forward(&prompt, &mut cache, Logits::Last).unwrap();
    }
    cache
}

/// Largest per-row `max |Δ| / range` between `batched` rows and `expected`.
fn worst(batched: &Tensor, expected: &[Tensor]) -> f32 {
    assert_eq!(batched.dims(), &[expected.len(), 512]);
    expected
        .iter()
        .enumerate()
        .map(|(i, e)| rel_max_diff(&batched.get(i).unwrap(), e))
        .fold(0.0, f32::max)
}

fn check_batch_matches_rows(variant: &str, prefix: &[u32]) {
    let model = load(variant);
    let rows = rows(variant, prefix);
    let embeds = embed_all(&model, &rows);
    let cache = prefix_cache(&model, prefix);
    let batched = model
        .forward_last_batch(&prompts(&rows, &embeds), &cache)
        .unwrap();
    let expected: Vec<Tensor> = rows.iter().map(|r| alone(&model, r)).collect();
    let d = worst(&batched, &expected);
    eprintln!(
        "{variant}: {} rows, prefix {} tokens: batched vs alone rel max diff {d:.2e}",
        rows.len(),
        prefix.len()
    );
    assert!(d <= BATCH_TOL, "{variant}: batched rows differ by {d}");
    assert_eq!(
        cache.seq_len(),
        prefix.len(),
        "the prefix cache is unchanged"
    );
}

#[test]
fn batch_after_a_cached_prefix_equals_rows_alone_tiny_a() {
    check_batch_matches_rows("tiny-a", &PREFIX);
}

#[test]
fn batch_after_a_cached_prefix_equals_rows_alone_tiny_b() {
    check_batch_matches_rows("tiny-b", &PREFIX);
}

#[test]
fn batch_with_an_empty_prefix_equals_rows_alone_tiny_a() {
    check_batch_matches_rows("tiny-a", &[]);
}

#[test]
fn batch_with_an_empty_prefix_equals_rows_alone_tiny_b() {
    check_batch_matches_rows("tiny-b", &[]);
}

#[test]
fn a_batch_of_one_equals_forward() {
    for variant in ["tiny-a", "tiny-b"] {
        let model = load(variant);
        let cache = prefix_cache(&model, &PREFIX);
        for row in rows(variant, &PREFIX) {
            let embeds = vec![row.pixels.as_ref().map(|p| embed(&model, p, &row.grids))];
            let row = [row];
            let prompt = prompts(&row, &embeds);
            let batched = model.forward_last_batch(&prompt, &cache).unwrap();
            let single = model
                .forward(&prompt[0], &mut cache.clone(), Logits::Last)
                .unwrap();
            let d = worst(&batched, &[single]);
            eprintln!("{variant}: batch of one vs forward rel max diff {d:.2e}");
            assert!(d <= BATCH_TOL, "{variant}: batch of one differs by {d}");
        }
    }
}

/// A one-token tail next to a tail of ~90 tokens (two images and text) gets 89 pads: if any
/// real token saw a pad, its logits would move far more than the tolerance (the weights are
/// large random ones).
#[test]
fn pads_do_not_leak_into_a_short_row() {
    for variant in ["tiny-a", "tiny-b"] {
        let model = load(variant);
        let cache = prefix_cache(&model, &PREFIX);
        let cases = fixtures().join(variant).join("cases");
        let two = read_case(&cases.join("two_images"));
        let long_tail: Vec<u32> = two.ids.iter().copied().chain(100..160).collect();
        let rows = [
            Row {
                ids: [&PREFIX[..], &[42]].concat(),
                grids: Vec::new(),
                pixels: None,
            },
            Row {
                ids: [&PREFIX[..], &long_tail].concat(),
                grids: two.grids,
                pixels: two.pixels,
            },
        ];
        let embeds = embed_all(&model, &rows);
        let all = prompts(&rows, &embeds);
        let short_alone = model.forward_last_batch(&all[..1], &cache).unwrap();
        let together = model.forward_last_batch(&all, &cache).unwrap();
        let reversed = model.forward_last_batch(&[all[1], all[0]], &cache).unwrap();
        let short = short_alone.get(0).unwrap();
        let d1 = rel_max_diff(&together.get(0).unwrap(), &short);
        let d2 = rel_max_diff(&reversed.get(1).unwrap(), &short);
        eprintln!("{variant}: short row next to a long one: rel max diff {d1:.2e}, {d2:.2e}");
        assert!(
            d1.max(d2) <= BATCH_TOL,
            "{variant}: pads leaked ({d1}, {d2})"
        );
        // The long row is unaffected by being batched too.
        let d3 = rel_max_diff(&together.get(1).unwrap(), &reversed.get(0).unwrap());
        assert!(d3 <= BATCH_TOL, "{variant}: long row differs by {d3}");
    }
}
