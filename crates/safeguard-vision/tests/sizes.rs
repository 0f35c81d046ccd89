//! `smart_resize`: exact values from the reference and properties over random sizes.

use proptest::prelude::*;
use safeguard_vision::{smart_resize, VisionError};

const MIN: usize = 56 * 56;
const MAX: usize = 28 * 28 * 1280;

#[test]
fn known_sizes_match_the_reference() {
    // (h, w, min, max) -> (h', w'), computed with transformers' smart_resize.
    let cases = [
        ((768, 1024, MIN, MAX), (756, 1036)),
        ((480, 640, MIN, MAX), (476, 644)),
        ((4000, 3000, MIN, MAX), (1148, 840)),
        ((1, 1, MIN, MAX), (56, 56)),
        ((17, 3000, MIN, MAX), (28, 2996)),
        ((42, 70, MIN, MAX), (56, 56)), // Python's round: 1.5 -> 2 and 2.5 -> 2
        ((200, 300, 3136, 18816), (112, 168)),
    ];
    for ((h, w, min, max), want) in cases {
        assert_eq!(smart_resize(h, w, 28, min, max).unwrap(), want, "{h}x{w}");
    }
}

#[test]
fn aspect_ratio_above_200_is_refused() {
    assert!(matches!(
        smart_resize(1, 1000, 28, MIN, MAX),
        Err(VisionError::AspectRatioTooLarge {
            height: 1,
            width: 1000
        })
    ));
    assert!(smart_resize(1, 200, 28, MIN, MAX).is_ok());
    assert!(smart_resize(1, 201, 28, MIN, MAX).is_err());
}

#[test]
fn empty_sides_and_zero_factor_are_errors() {
    assert!(matches!(
        smart_resize(0, 10, 28, MIN, MAX),
        Err(VisionError::ZeroSize { .. })
    ));
    assert!(matches!(
        smart_resize(10, 10, 0, MIN, MAX),
        Err(VisionError::InvalidConfig(_))
    ));
}

proptest! {
    #[test]
    fn sides_are_multiples_of_the_factor_within_bounds(
        h in 1usize..20_000,
        w in 1usize..20_000,
        min_tokens in 4usize..64,
        extra in 0usize..16_384,
    ) {
        prop_assume!(h.max(w) as f64 / h.min(w) as f64 <= 200.0);
        let (min, max) = (min_tokens * 784, (min_tokens + extra) * 784);
        let (rh, rw) = smart_resize(h, w, 28, min, max).unwrap();
        prop_assert!(rh >= 28 && rw >= 28);
        prop_assert_eq!(rh % 28, 0);
        prop_assert_eq!(rw % 28, 0);
        // The reference can leave the bounds in two documented corners: a side clamped up to
        // the factor (very elongated images) and a ceiling overshoot when min ~ max.
        let clamped = (h as f64 * (max as f64 / (h * w) as f64).sqrt()) < 28.0
            || (w as f64 * (max as f64 / (h * w) as f64).sqrt()) < 28.0;
        if !clamped {
            prop_assert!(rh * rw <= max || rh * rw < min + 2 * 28 * (rh + rw),
                "{}x{} -> {}x{} above max {}", h, w, rh, rw, max);
        }
        prop_assert!(rh * rw >= min || rh * rw > max - 2 * 28 * (rh + rw) || clamped,
            "{}x{} -> {}x{} below min {}", h, w, rh, rw, min);
    }

    #[test]
    fn aspect_ratio_is_kept_roughly(h in 100usize..5000, w in 100usize..5000) {
        let (rh, rw) = smart_resize(h, w, 28, MIN, MAX).unwrap();
        let (before, after) = (h as f64 / w as f64, rh as f64 / rw as f64);
        // One factor step on either side at most.
        let slack = 28.0 / rh.min(rw) as f64 * 2.5;
        prop_assert!((after / before - 1.0).abs() <= slack, "{h}x{w} -> {rh}x{rw}");
    }
}
