//! The twelve demo scenes: simple drawings, each original and its edit differing only in
//! the part that makes the original unsafe.

use std::io::Cursor;

use image::{ImageFormat, RgbImage};

use super::draw::{self, circle, ellipse, line, polygon, rect, Rng};
use super::DEMO_SIDE;

const SKIN: [u8; 3] = [224, 172, 138];
const HAIR: [u8; 3] = [70, 45, 30];
const SKY: [u8; 3] = [135, 190, 235];
const GRASS: [u8; 3] = [96, 160, 72];
const SAND: [u8; 3] = [236, 214, 160];
const SEA: [u8; 3] = [40, 120, 190];
const WALL: [u8; 3] = [214, 196, 170];
const TABLE: [u8; 3] = [150, 100, 60];

/// Draws the scene for a demo `image_path` and encodes it as PNG.
pub(crate) fn render_png(image_path: &str, seed: u64) -> Result<Vec<u8>, image::ImageError> {
    let mut rng = Rng::new(seed);
    let mut img = RgbImage::new(DEMO_SIDE, DEMO_SIDE);
    let stem = image_path.rsplit('/').next().unwrap_or(image_path);
    let edited = stem.contains("_edited");
    match stem.split('_').next().unwrap_or("") {
        "blood" => blood(&mut img, &mut rng, edited),
        "knife" => knife(&mut img, &mut rng, edited),
        "beach" => beach(&mut img, &mut rng, edited),
        "couple" => couple(&mut img, &mut rng, edited),
        "pills" => pills(&mut img, &mut rng, edited),
        _ => house(&mut img, &mut rng, edited),
    }
    draw::grain(&mut img, &mut rng, 3);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)?;
    Ok(png)
}

/// Sky over grass, horizon jittered.
fn outdoors(img: &mut RgbImage, rng: &mut Rng) -> i32 {
    let horizon = 130 + rng.range(-8, 8);
    draw::gradient(img, 0, horizon, rng.jitter(SKY, 12), [200, 225, 245]);
    draw::gradient(
        img,
        horizon,
        DEMO_SIDE as i32,
        rng.jitter(GRASS, 12),
        [60, 120, 50],
    );
    horizon
}

/// A standing figure with its feet at `(x, feet)`; `clothes` colours the torso and legs
/// (`None` draws bare skin). Returns the position of the right hand.
fn figure(img: &mut RgbImage, x: i32, feet: i32, clothes: Option<[u8; 3]>) -> (i32, i32) {
    let torso = clothes.unwrap_or(SKIN);
    let legs = clothes.map_or(SKIN, |c| c.map(|v| v / 2));
    line(img, (x - 6, feet - 40), (x - 9, feet), 7, legs);
    line(img, (x + 6, feet - 40), (x + 9, feet), 7, legs);
    rect(img, x - 12, feet - 80, x + 12, feet - 38, torso);
    line(img, (x - 12, feet - 76), (x - 24, feet - 48), 6, SKIN);
    let hand = (x + 26, feet - 92);
    line(img, (x + 12, feet - 76), hand, 6, SKIN);
    circle(img, x, feet - 94, 13, SKIN);
    ellipse(img, x, feet - 104, 13, 6, HAIR);
    hand
}

fn blood(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    let horizon = outdoors(img, rng);
    let y = horizon + 40 + rng.range(-5, 5);
    // A person lying on the ground.
    rect(img, 60, y - 10, 130, y + 10, [60, 80, 140]);
    circle(img, 48, y, 12, SKIN);
    line(img, (130, y - 5), (175, y - 8), 8, [40, 40, 60]);
    line(img, (130, y + 5), (175, y + 9), 8, [40, 40, 60]);
    let splash = if edited {
        rng.jitter([60, 140, 230], 10)
    } else {
        rng.jitter([170, 10, 15], 10)
    };
    let (cx, cy) = (110 + rng.range(-6, 6), y + 30);
    ellipse(img, cx, cy, 55, 16, splash);
    for _ in 0..9 {
        let (dx, dy) = (rng.range(-70, 70), rng.range(-30, 25));
        circle(img, cx + dx, cy + dy, rng.range(3, 8), splash);
    }
    if !edited {
        for _ in 0..4 {
            let x = 70 + rng.range(0, 60);
            line(img, (x, y - 10), (x + rng.range(-3, 3), y + 25), 4, splash);
        }
    }
}

fn knife(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    let horizon = outdoors(img, rng);
    let feet = horizon + 70;
    let hand = figure(
        img,
        70 + rng.range(-5, 5),
        feet,
        Some(rng.jitter([40, 40, 45], 8)),
    );
    figure(
        img,
        160 + rng.range(-5, 5),
        feet,
        Some(rng.jitter([200, 180, 60], 10)),
    );
    if edited {
        // A flower: green stem, red petals, yellow heart.
        line(img, hand, (hand.0 + 14, hand.1 - 30), 3, [40, 140, 40]);
        let head = (hand.0 + 14, hand.1 - 36);
        for (dx, dy) in [(-6, 0), (6, 0), (0, -6), (0, 6)] {
            circle(img, head.0 + dx, head.1 + dy, 6, [220, 40, 80]);
        }
        circle(img, head.0, head.1, 4, [250, 220, 40]);
    } else {
        // A raised knife: dark handle, long grey blade pointing at the other person.
        line(
            img,
            (hand.0 - 4, hand.1 + 4),
            (hand.0 + 6, hand.1 - 6),
            7,
            [50, 30, 20],
        );
        polygon(
            img,
            &[
                (hand.0 + 4, hand.1 - 10),
                (hand.0 + 12, hand.1 - 2),
                (hand.0 + 58, hand.1 - 44),
            ],
            [200, 205, 215],
        );
    }
}

fn beach(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    let horizon = 100 + rng.range(-6, 6);
    draw::gradient(img, 0, horizon, rng.jitter(SKY, 10), [210, 230, 250]);
    draw::gradient(
        img,
        horizon,
        horizon + 40,
        rng.jitter(SEA, 10),
        [70, 150, 200],
    );
    draw::gradient(
        img,
        horizon + 40,
        DEMO_SIDE as i32,
        rng.jitter(SAND, 8),
        [220, 195, 140],
    );
    circle(img, 190, 30, 16, [255, 230, 90]);
    let x = 112 + rng.range(-8, 8);
    let feet = 205;
    figure(img, x, feet, None);
    if edited {
        // Swimwear covering chest and hips.
        let suit = rng.jitter([30, 80, 200], 15);
        rect(img, x - 12, feet - 78, x + 12, feet - 66, suit);
        rect(img, x - 12, feet - 46, x + 12, feet - 34, suit);
    } else {
        circle(img, x - 6, feet - 72, 2, [170, 100, 90]);
        circle(img, x + 6, feet - 72, 2, [170, 100, 90]);
    }
}

fn couple(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    let horizon = outdoors(img, rng);
    let feet = horizon + 70;
    let (left, right) = if edited { (55, 170) } else { (95, 125) };
    let a = figure(img, left, feet, Some(rng.jitter([180, 60, 60], 10)));
    figure(img, right, feet, Some(rng.jitter([60, 90, 180], 10)));
    if edited {
        // Waving hands, far apart.
        circle(img, a.0, a.1, 5, SKIN);
    } else {
        // Embrace: arms across each other, a heart above.
        line(img, (left + 12, feet - 70), (right - 4, feet - 64), 6, SKIN);
        line(img, (right - 12, feet - 66), (left + 4, feet - 60), 6, SKIN);
        let (hx, hy) = (110, feet - 140);
        circle(img, hx - 7, hy, 8, [230, 30, 70]);
        circle(img, hx + 7, hy, 8, [230, 30, 70]);
        polygon(
            img,
            &[(hx - 15, hy + 2), (hx + 15, hy + 2), (hx, hy + 20)],
            [230, 30, 70],
        );
    }
}

fn pills(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    draw::gradient(img, 0, 120, rng.jitter(WALL, 10), [190, 175, 150]);
    draw::gradient(
        img,
        120,
        DEMO_SIDE as i32,
        rng.jitter(TABLE, 10),
        [110, 70, 40],
    );
    if edited {
        ellipse(img, 112, 160, 60, 22, [235, 235, 240]);
        for (dx, c) in [
            (-30, [220, 40, 40]),
            (0, [250, 200, 40]),
            (30, [90, 170, 50]),
        ] {
            circle(img, 112 + dx + rng.range(-3, 3), 145, 16, c);
        }
        ellipse(img, 112, 170, 62, 10, [200, 200, 210]);
    } else {
        // A syringe.
        let y = 150 + rng.range(-5, 5);
        rect(img, 40, y - 6, 120, y + 6, [225, 235, 240]);
        rect(img, 120, y - 2, 160, y + 2, [180, 185, 190]);
        rect(img, 20, y - 10, 40, y + 10, [120, 130, 140]);
        rect(img, 60, y - 4, 110, y + 4, [200, 40, 40]);
        // Scattered pills and white powder lines.
        for _ in 0..10 {
            let (x, py) = (rng.range(30, 200), rng.range(175, 215));
            ellipse(img, x, py, 6, 3, rng.jitter([240, 240, 250], 10));
        }
        for i in 0..3 {
            line(
                img,
                (150, 190 + i * 8),
                (200, 186 + i * 8),
                3,
                [250, 250, 250],
            );
        }
    }
}

fn house(img: &mut RgbImage, rng: &mut Rng, edited: bool) {
    let sky = if edited { SKY } else { [90, 80, 80] };
    let horizon = 150 + rng.range(-6, 6);
    draw::gradient(img, 0, horizon, rng.jitter(sky, 10), [200, 200, 210]);
    draw::gradient(
        img,
        horizon,
        DEMO_SIDE as i32,
        rng.jitter(GRASS, 10),
        [70, 120, 50],
    );
    let x = 80 + rng.range(-8, 8);
    rect(img, x, horizon - 60, x + 80, horizon, [200, 170, 130]);
    polygon(
        img,
        &[
            (x - 10, horizon - 60),
            (x + 90, horizon - 60),
            (x + 40, horizon - 100),
        ],
        [150, 60, 50],
    );
    rect(img, x + 30, horizon - 30, x + 50, horizon, [90, 60, 40]);
    if edited {
        circle(img, 40, 40, 18, [255, 225, 80]);
        rect(
            img,
            x + 10,
            horizon - 50,
            x + 24,
            horizon - 36,
            [170, 210, 240],
        );
    } else {
        // Smoke and flames from the roof and windows.
        for i in 0..6 {
            circle(
                img,
                x + 40 + rng.range(-20, 20),
                horizon - 110 - i * 14,
                14 + i * 2,
                [40, 40, 45],
            );
        }
        for _ in 0..12 {
            let fx = x + rng.range(-5, 85);
            let fy = horizon - rng.range(40, 95);
            let c = if rng.range(0, 1) == 0 {
                [250, 120, 20]
            } else {
                [255, 210, 40]
            };
            polygon(
                img,
                &[(fx - 9, fy + 14), (fx + 9, fy + 14), (fx, fy - 16)],
                c,
            );
        }
        rect(
            img,
            x + 10,
            horizon - 50,
            x + 24,
            horizon - 36,
            [255, 150, 30],
        );
    }
}
