//! Minimal raster drawing for the demo scenes: filled shapes on an [`RgbImage`], clipped to
//! the canvas, and a small deterministic random source.

use image::{Rgb, RgbImage};

/// SplitMix64: a tiny deterministic generator (the demo must not depend on a crate's
/// generator staying the same across versions).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi]`.
    pub(crate) fn range(&mut self, lo: i32, hi: i32) -> i32 {
        let span = (hi - lo + 1).max(1) as u64;
        lo + (self.next_u64() % span) as i32
    }

    /// A colour with each channel moved by up to `by`.
    pub(crate) fn jitter(&mut self, c: [u8; 3], by: i32) -> [u8; 3] {
        c.map(|v| (i32::from(v) + self.range(-by, by)).clamp(0, 255) as u8)
    }
}

/// Sets one pixel if it is on the canvas.
pub(crate) fn put(img: &mut RgbImage, x: i32, y: i32, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// Vertical gradient from `top` to `bottom` over rows `y0..y1`.
pub(crate) fn gradient(img: &mut RgbImage, y0: i32, y1: i32, top: [u8; 3], bottom: [u8; 3]) {
    let h = (y1 - y0).max(1) as f32;
    for y in y0..y1 {
        let t = (y - y0) as f32 / h;
        let c = [0, 1, 2].map(|i| (f32::from(top[i]) * (1.0 - t) + f32::from(bottom[i]) * t) as u8);
        for x in 0..img.width() as i32 {
            put(img, x, y, c);
        }
    }
}

/// Filled axis-aligned rectangle, corners inclusive-exclusive.
pub(crate) fn rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: [u8; 3]) {
    for y in y0..y1 {
        for x in x0..x1 {
            put(img, x, y, c);
        }
    }
}

/// Filled ellipse centred at `(cx, cy)` with radii `rx`, `ry`.
pub(crate) fn ellipse(img: &mut RgbImage, cx: i32, cy: i32, rx: i32, ry: i32, c: [u8; 3]) {
    let (rx, ry) = (rx.max(1), ry.max(1));
    for y in -ry..=ry {
        for x in -rx..=rx {
            let (fx, fy) = (x as f32 / rx as f32, y as f32 / ry as f32);
            if fx * fx + fy * fy <= 1.0 {
                put(img, cx + x, cy + y, c);
            }
        }
    }
}

/// Filled circle.
pub(crate) fn circle(img: &mut RgbImage, cx: i32, cy: i32, r: i32, c: [u8; 3]) {
    ellipse(img, cx, cy, r, r, c);
}

/// A line `width` pixels thick, drawn as a chain of discs.
pub(crate) fn line(img: &mut RgbImage, from: (i32, i32), to: (i32, i32), width: i32, c: [u8; 3]) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let steps = dx.abs().max(dy.abs()).max(1);
    for i in 0..=steps {
        let x = from.0 + dx * i / steps;
        let y = from.1 + dy * i / steps;
        circle(img, x, y, (width / 2).max(1), c);
    }
}

/// Filled polygon (even-odd rule, pixel centres).
pub(crate) fn polygon(img: &mut RgbImage, points: &[(i32, i32)], c: [u8; 3]) {
    if points.len() < 3 {
        return;
    }
    let y_min = points.iter().map(|p| p.1).min().unwrap_or(0);
    let y_max = points.iter().map(|p| p.1).max().unwrap_or(0);
    for y in y_min..=y_max {
        let yc = y as f32 + 0.5;
        let mut xs = Vec::new();
        for (i, &(x0, y0)) in points.iter().enumerate() {
            let (x1, y1) = points[(i + 1) % points.len()];
            let (fy0, fy1) = (y0 as f32, y1 as f32);
            if (fy0 <= yc && yc < fy1) || (fy1 <= yc && yc < fy0) {
                xs.push(x0 as f32 + (yc - fy0) * (x1 - x0) as f32 / (fy1 - fy0));
            }
        }
        xs.sort_by(|a, b| a.total_cmp(b));
        for pair in xs.chunks(2) {
            if let [a, b] = pair {
                for x in a.round() as i32..b.round() as i32 {
                    put(img, x, y, c);
                }
            }
        }
    }
}

/// Adds faint per-pixel noise so that images look less synthetic to an encoder.
pub(crate) fn grain(img: &mut RgbImage, rng: &mut Rng, by: i32) {
    for pixel in img.pixels_mut() {
        let n = rng.range(-by, by);
        pixel.0 = pixel.0.map(|v| (i32::from(v) + n).clamp(0, 255) as u8);
    }
}
