//! A bit-exact port of Pillow 13's bicubic resampler for 8-bit RGB (`libImaging/Resample.c`).
//!
//! Pillow resamples in two separable one-dimensional passes. Each pass has a table of
//! coefficients, one window per output sample, built in `f64` and then rounded to fixed point
//! with [`PRECISION_BITS`] fractional bits; the pass itself is integer arithmetic only:
//!
//! ```text
//! out = clamp((2^21 + Σ_t in[start + t] · w_t) >> 22, 0, 255)      w_t: i32, Σ w_t ≈ 2^22
//! ```
//!
//! The intermediate image between the passes is 8-bit (rounded and clipped as above), so the
//! order of the passes changes the result; [`resize_rgb`] follows Pillow 13's choice and, like
//! Pillow, runs only the passes whose side changes.
//!
//! Every floating-point step of the coefficient tables is written in the same order as Pillow's C
//! (no fused multiply-add, `f32` box coordinates widened to `f64`, truncation toward zero), so the
//! integer weights are identical and therefore so is every output byte. This holds against
//! Pillow builds whose compiler does not contract `a * b + c` into an FMA, which is the case for
//! the x86-64 wheels on PyPI (baseline SSE2); an FMA-contracting build can round a coefficient
//! differently.

use std::ops::Range;

/// Fractional bits of the fixed-point weights: `32 - 8 - 2`, leaving 8 bits for the sample and 2
/// for the overshoot of a kernel with negative lobes (a weighted sum may exceed 255 or drop below
/// 0 before it is clipped).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// `0.5` in fixed point: the accumulator starts here so that the final shift rounds half up.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Support of the bicubic kernel at scale 1, in input samples on each side of the centre.
const SUPPORT: f64 = 2.0;

/// The cubic convolution kernel of Keys (1981) with `a = -0.5` (Catmull-Rom), as Pillow writes
/// it: the same expression order, so the same rounding.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point weights of one resampling pass along one axis.
///
/// Output sample `i` reads the input samples `windows[i]` with the weights
/// `weights[i * stride..][..windows[i].len()]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Coefficients {
    windows: Vec<Range<usize>>,
    weights: Vec<i32>,
    stride: usize,
}

impl Coefficients {
    /// The table for resizing `in_size` samples to `out_size` (both at least 1) over the whole
    /// input, Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
    ///
    /// For output sample `i` the kernel is centred at `(i + 0.5) · scale` in input coordinates,
    /// where `scale = in_size / out_size`. When downscaling (`scale > 1`) the kernel is stretched
    /// by `scale` (so it averages every input sample it covers: antialiasing) and its support
    /// widens to `2 · scale`. The window is `[trunc(centre - support + 0.5), trunc(centre +
    /// support + 0.5))` clipped to the input; input sample `j` gets `bicubic((j - centre + 0.5) /
    /// filterscale)`, the weights are divided by their sum (so a flat input stays flat, also at
    /// the borders where the window is clipped) and rounded half away from zero to
    /// [`PRECISION_BITS`] bits.
    pub(super) fn bicubic(in_size: usize, out_size: usize) -> Self {
        assert!(in_size > 0 && out_size > 0, "resize between empty sides");
        // Pillow's box is `float[4]`; `in1 - in0` is a float subtraction widened to double.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut windows = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut kernel = vec![0f64; stride];
        for (i, out) in weights.chunks_exact_mut(stride).enumerate() {
            let centre = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's `(int)`; a negative start clips to 0 anyway.
            let start = ((centre - support + 0.5) as i64).max(0) as usize;
            let end = ((centre + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = &mut kernel[..end - start];
            let mut sum = 0.0;
            for (t, w) in taps.iter_mut().enumerate() {
                *w = bicubic(((start + t) as f64 - centre + 0.5) * inv_filterscale);
                sum += *w;
            }
            if sum != 0.0 {
                taps.iter_mut().for_each(|w| *w /= sum);
            }
            for (fixed, &w) in out.iter_mut().zip(taps.iter()) {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *fixed = if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 } as i32;
            }
            windows.push(start..end);
        }
        Self {
            windows,
            weights,
            stride,
        }
    }

    /// Output samples of this pass.
    fn len(&self) -> usize {
        self.windows.len()
    }

    /// The input rows (or columns) that any output sample reads: from the first window's start
    /// to the last window's end.
    fn span(&self) -> Range<usize> {
        let first = self.windows.first().map_or(0, |w| w.start);
        let last = self.windows.last().map_or(0, |w| w.end);
        first..last
    }

    /// Output sample `i`: its input window and its weights (one per input sample).
    #[inline(always)]
    fn window(&self, i: usize) -> (Range<usize>, &[i32]) {
        let window = self.windows[i].clone();
        let weights = &self.weights[i * self.stride..][..window.len()];
        (window, weights)
    }
}

/// Rounds a fixed-point accumulator to a sample and clips it to `0..=255` (Pillow's `clip8`,
/// whose lookup table covers every value a pass can produce).
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes packed RGB (`width * height * 3` bytes) to `out_w × out_h` exactly as Pillow 13's
/// `Image.resize((out_w, out_h), Image.BICUBIC)` does on an `RGB` image.
///
/// Pass order (`ImagingResampleInner`): the vertical pass runs first when the height shrinks by
/// more than twice as many pixels as the width (`in_h - out_h > 0` and `in_h - out_h > 2 (in_w -
/// out_w)`), else the horizontal one. A pass whose side is unchanged is skipped (at scale 1 the
/// bicubic weights are exactly `[0, 1, 0]`, so it would be the identity). When the horizontal pass runs
/// first it only processes the rows that the vertical pass reads ([`Coefficients::span`]), as
/// Pillow does; that saves work and changes nothing.
pub(super) fn resize_rgb(
    src: &[u8],
    (in_w, in_h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        in_w * in_h * 3,
        "source is not {in_w}x{in_h} RGB"
    );
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let vertical_first = vertical_first((in_w, in_h), (out_w, out_h));
    match (need_horizontal, need_vertical) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal(src, in_w, 0..in_h, &Coefficients::bicubic(in_w, out_w)),
        (false, true) => vertical(src, in_w, 0, &Coefficients::bicubic(in_h, out_h)),
        (true, true) if vertical_first => {
            let rows = vertical(src, in_w, 0, &Coefficients::bicubic(in_h, out_h));
            horizontal(&rows, in_w, 0..out_h, &Coefficients::bicubic(in_w, out_w))
        }
        (true, true) => {
            let columns = Coefficients::bicubic(in_h, out_h);
            let span = columns.span();
            let offset = span.start;
            let cols = horizontal(src, in_w, span, &Coefficients::bicubic(in_w, out_w));
            vertical(&cols, out_w, offset, &columns)
        }
    }
}

/// Pillow 13's choice of pass order: vertical first only when the height shrinks by more than
/// twice as many pixels as the width does (Pillow ≤ 12 always went horizontal first).
pub(super) fn vertical_first((in_w, in_h): (usize, usize), (out_w, out_h): (usize, usize)) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

/// Rows that the horizontal pass processes together (see [`horizontal_blocks`]).
const BLOCK: usize = 16;

/// Samples of a block's column: `BLOCK` pixels of 3 channels.
const LANES: usize = 3 * BLOCK;

/// One source column of a block of rows: pixel `r` of the column is bytes `3r..3r + 3`; the
/// bytes from [`LANES`] on are padding (a column fills one 64-byte cache line).
type Column = [u8; 64];

// The AVX2 kernel loads a column 8 bytes at a time; the transposition writes 4 bytes per pixel.
const _: () = assert!(LANES.is_multiple_of(8) && LANES < 64);

/// `2^21 + Σ_t columns[t] · weights[t]`, lane by lane: the accumulators of one output pixel for
/// every row of a block.
#[inline(always)]
fn dot_columns(columns: &[Column], weights: &[i32]) -> [i32; LANES] {
    let mut acc = [HALF; LANES];
    for (column, &w) in columns.iter().zip(weights) {
        for (a, &v) in acc.iter_mut().zip(column) {
            *a += i32::from(v) * w;
        }
    }
    acc
}

/// The horizontal pass over the source rows `rows` of an RGB image `width` pixels wide:
/// `coeffs.len()` output pixels per row, one output row per source row.
///
/// On x86-64 CPUs with AVX2 the same code is compiled a second time with AVX2 enabled, its
/// block kernel written with AVX2 intrinsics, and chosen at run time (the baseline, SSE2, has no
/// 32-bit vector multiply, so the loops stay scalar there); the arithmetic is integer either
/// way, so the bytes do not depend on the CPU (`avx2_and_portable_passes_agree`).
fn horizontal(src: &[u8], width: usize, rows: Range<usize>, coeffs: &Coefficients) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { horizontal_avx2(src, width, rows, coeffs) };
    }
    horizontal_blocks(src, width, rows, coeffs, dot_columns)
}

/// [`horizontal_blocks`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2(
    src: &[u8],
    width: usize,
    rows: Range<usize>,
    coeffs: &Coefficients,
) -> Vec<u8> {
    // SAFETY: this function only runs where the CPU supports AVX2.
    horizontal_blocks(src, width, rows, coeffs, |columns, weights| unsafe {
        avx2::dot_columns(columns, weights)
    })
}

/// The block kernel of [`horizontal_blocks`] written with AVX2 intrinsics, so that the 48
/// accumulators stay in six registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_cvtepu8_epi32, _mm256_mullo_epi32, _mm256_set1_epi32,
        _mm256_storeu_si256, _mm_loadl_epi64,
    };

    use super::{Column, HALF, LANES};

    /// [`dot_columns`](super::dot_columns) with AVX2: eight `i32` lanes per register.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_columns(columns: &[Column], weights: &[i32]) -> [i32; LANES] {
        const REGS: usize = LANES / 8;
        let mut acc: [__m256i; REGS] = [_mm256_set1_epi32(HALF); REGS];
        for (column, &w) in columns.iter().zip(weights) {
            let w = _mm256_set1_epi32(w);
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `8 * k + 8 <= LANES <= 64`, the column's length: the load stays in it.
                let bytes = unsafe { _mm_loadl_epi64(column.as_ptr().add(8 * k).cast()) };
                *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(bytes), w));
            }
        }
        let mut out = [0i32; LANES];
        for (k, a) in acc.iter().enumerate() {
            // SAFETY: lanes `8 * k .. 8 * k + 8` of `out` exist.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * k).cast(), *a) };
        }
        out
    }
}

/// The body of [`horizontal`].
///
/// Rows go in blocks of [`BLOCK`]: the block is first transposed so that each source column
/// holds its `BLOCK` pixels contiguously, then every output pixel of the block is one
/// multiply-add of whole columns into `3 * BLOCK` accumulators (`dot`: [`dot_columns`] or its
/// AVX2 form), a loop over contiguous memory. The sums are the same integers as Pillow's
/// pixel-by-pixel loop. The last `rows.len() % BLOCK` rows go pixel by pixel.
#[inline(always)]
fn horizontal_blocks(
    src: &[u8],
    width: usize,
    rows: Range<usize>,
    coeffs: &Coefficients,
    dot: impl Fn(&[Column], &[i32]) -> [i32; LANES],
) -> Vec<u8> {
    let (in_line, out_line) = (width * 3, coeffs.len() * 3);
    let mut out = vec![0u8; rows.len() * out_line];
    let src = &src[rows.start * in_line..rows.end * in_line];
    let blocked = rows.len() / BLOCK * BLOCK;
    let (src_blocks, src_rest) = src.split_at(blocked * in_line);
    let (out_blocks, out_rest) = out.split_at_mut(blocked * out_line);
    let mut columns: Vec<Column> = vec![[0; 64]; width];
    for (block, out_block) in src_blocks
        .chunks_exact(BLOCK * in_line)
        .zip(out_blocks.chunks_exact_mut(BLOCK * out_line))
    {
        // Column by column, four bytes at a time (one load and one store per pixel): the fourth
        // byte lands on the next row's slot, written just after, or on the column's padding.
        // The last column has no fourth byte to read.
        let lines: [&[u8]; BLOCK] = std::array::from_fn(|r| &block[r * in_line..][..in_line]);
        let (last, body) = columns.split_last_mut().expect("width >= 1");
        for (x, column) in body.iter_mut().enumerate() {
            for (r, line) in lines.iter().enumerate() {
                column[3 * r..3 * r + 4].copy_from_slice(&line[3 * x..3 * x + 4]);
            }
        }
        for (r, line) in lines.iter().enumerate() {
            last[3 * r..3 * r + 3].copy_from_slice(&line[in_line - 3..]);
        }
        for x in 0..coeffs.len() {
            let (window, weights) = coeffs.window(x);
            let acc = dot(&columns[window], weights);
            for (r, acc) in acc.chunks_exact(3).enumerate() {
                let px = &mut out_block[r * out_line + 3 * x..][..3];
                for (o, &a) in px.iter_mut().zip(acc) {
                    *o = clip8(a);
                }
            }
        }
    }
    for (line, out_line) in src_rest
        .chunks_exact(in_line)
        .zip(out_rest.chunks_exact_mut(out_line))
    {
        horizontal_row(line, out_line, coeffs);
    }
    out
}

/// One row of the horizontal pass, pixel by pixel (Pillow's loop).
#[inline(always)]
fn horizontal_row(line: &[u8], out_line: &mut [u8], coeffs: &Coefficients) {
    for (x, px) in out_line.chunks_exact_mut(3).enumerate() {
        let (window, weights) = coeffs.window(x);
        let taps = &line[window.start * 3..window.end * 3];
        let mut acc = [HALF; 3];
        for (sample, &w) in taps.chunks_exact(3).zip(weights) {
            acc[0] += i32::from(sample[0]) * w;
            acc[1] += i32::from(sample[1]) * w;
            acc[2] += i32::from(sample[2]) * w;
        }
        px[0] = clip8(acc[0]);
        px[1] = clip8(acc[1]);
        px[2] = clip8(acc[2]);
    }
}

/// The vertical pass over an RGB image `width` pixels wide whose row 0 is source row `offset`
/// (the horizontal pass may have skipped the rows above): `coeffs.len()` output rows.
///
/// Each output row is accumulated one input row at a time into a row of `i32` accumulators, so
/// the inner loop runs over contiguous bytes; integer addition makes this the same sum as
/// Pillow's sample-by-sample loop. Dispatched to an AVX2 build of the same code where the CPU has it, as [`horizontal`].
fn vertical(src: &[u8], width: usize, offset: usize, coeffs: &Coefficients) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { vertical_avx2(src, width, offset, coeffs) };
    }
    vertical_rows(src, width, offset, coeffs)
}

/// [`vertical_rows`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(src: &[u8], width: usize, offset: usize, coeffs: &Coefficients) -> Vec<u8> {
    vertical_rows(src, width, offset, coeffs)
}

/// The body of [`vertical`].
#[inline(always)]
fn vertical_rows(src: &[u8], width: usize, offset: usize, coeffs: &Coefficients) -> Vec<u8> {
    let line = width * 3;
    let mut out = vec![0u8; coeffs.len() * line];
    let mut acc = vec![0i32; line];
    for (y, out_line) in out.chunks_exact_mut(line).enumerate() {
        let (window, weights) = coeffs.window(y);
        acc.fill(HALF);
        for (row, &w) in (window.start - offset..window.end - offset).zip(weights) {
            let input = &src[row * line..(row + 1) * line];
            for (a, &v) in acc.iter_mut().zip(input) {
                *a += i32::from(v) * w;
            }
        }
        for (o, &a) in out_line.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_stay_in_the_input() {
        for (input, output) in [(1, 7), (7, 1), (10, 3), (3, 10), (4032, 1288), (17, 17)] {
            let c = Coefficients::bicubic(input, output);
            assert_eq!(c.len(), output);
            for i in 0..output {
                let (window, weights) = c.window(i);
                assert!(
                    !window.is_empty() && window.end <= input,
                    "{input}->{output}"
                );
                let sum: i64 = weights.iter().map(|&w| i64::from(w)).sum();
                // Each weight is rounded on its own: the sum is within half a unit per tap.
                assert!(
                    (sum - (1 << PRECISION_BITS)).unsigned_abs() <= weights.len() as u64,
                    "{input}->{output} [{i}]: {sum}"
                );
            }
        }
    }

    #[test]
    fn kernel_matches_catmull_rom() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
    }

    #[test]
    fn one_pixel_source_is_replicated() {
        let out = resize_rgb(&[200, 40, 90], (1, 1), (3, 2));
        assert_eq!(out, [200, 40, 90].repeat(6));
    }

    /// The AVX2 builds give the same bytes as the portable code (which is what runs on CPUs
    /// without AVX2; the fixture tests exercise whichever this CPU picks).
    #[test]
    fn avx2_and_portable_passes_agree() {
        let (w, h) = (37, 2 * BLOCK + 7);
        let mut state = 0x9e37_79b9u32;
        let src: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        for out in [1, 5, 13, 36, 38, 80] {
            let across = Coefficients::bicubic(w, out);
            assert_eq!(
                horizontal(&src, w, 3..h, &across),
                horizontal_blocks(&src, w, 3..h, &across, dot_columns),
                "horizontal {w} -> {out}"
            );
            let down = Coefficients::bicubic(h, out);
            assert_eq!(
                vertical(&src, w, 0, &down),
                vertical_rows(&src, w, 0, &down),
                "vertical {h} -> {out}"
            );
        }
        let rows: Vec<u8> = (0..h)
            .flat_map(|y| {
                let line = &src[y * w * 3..(y + 1) * w * 3];
                let mut row = vec![0u8; 13 * 3];
                horizontal_row(line, &mut row, &Coefficients::bicubic(w, 13));
                row
            })
            .collect();
        assert_eq!(
            rows,
            horizontal(&src, w, 0..h, &Coefficients::bicubic(w, 13))
        );
    }

    #[test]
    fn flat_image_stays_flat() {
        let src = [17u8, 130, 250].repeat(13 * 9);
        for size in [(5, 4), (26, 18), (13, 2), (1, 9), (40, 3)] {
            let out = resize_rgb(&src, (13, 9), size);
            assert_eq!(out, [17u8, 130, 250].repeat(size.0 * size.1), "{size:?}");
        }
    }
}
