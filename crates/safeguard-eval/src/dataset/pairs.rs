//! Recovering edited pairs, categories and roles from image paths.
//!
//! SafeEditBench pairs each unsafe image with a minimally edited safe counterpart, but its
//! rows carry no pair column: the pair has to be read from `image_path`. The rule:
//!
//! 1. Split the path on `/` and `\`. Directory components that are a *role word* (`safe`,
//!    `unsafe`, `edit`, `edited`, `orig`, `original`, any case) are dropped.
//! 2. From the file name, drop the extension (the edit may be a PNG of a JPEG source), then
//!    strip role words joined by `_`, `-`, `.` or a space, at the end (`x_safe`,
//!    `x-edited`) or at the start (`unsafe_x`), repeatedly.
//! 3. The remaining directories and stem, joined with `/`, are the **pair key**.
//! 4. Items whose images have the same key but **different paths** form a pair: they all get
//!    that key as `pair_id`. A key with one image path gets no pair id.
//!
//! So `unsafe/O2/0042.jpg` and `safe/O2/0042.png` pair as `O2/0042`; `img/17_orig.png`
//! and `img/17_edited.png` pair as `img/17`.
//!
//! The role words also give the item's `source`: `safe`, `edit`, `edited` → `edited`;
//! `unsafe`, `orig`, `original` → `original` (none, or both kinds, → no source). A
//! directory named like a LlavaGuard category (`O1`…`O9`, optionally followed by a
//! non-digit, e.g. `O2_violence`) gives the item's `category`.

use std::collections::{BTreeSet, HashMap};

use super::Item;

const EDITED: &[&str] = &["safe", "edit", "edited"];
const ORIGINAL: &[&str] = &["unsafe", "orig", "original"];
const SEPARATORS: &[char] = &['_', '-', '.', ' '];

/// What an image path tells about its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The pair key (rule above).
    pub pair_key: String,
    /// `original` or `edited`, from the role words.
    pub role: Option<&'static str>,
    /// A LlavaGuard category directory (`O2`, `O2_violence`…).
    pub category: Option<String>,
}

fn role_of(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    if EDITED.contains(&word.as_str()) {
        Some("edited")
    } else if ORIGINAL.contains(&word.as_str()) {
        Some("original")
    } else {
        None
    }
}

/// Reads the pair key, role and category from an image path.
pub fn analyse(image_path: &str) -> PathInfo {
    let components: Vec<&str> = image_path
        .split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let (file, dirs) = match components.split_last() {
        Some((file, dirs)) => (*file, dirs),
        None => ("", &[][..]),
    };
    let mut roles = BTreeSet::new();
    let mut kept = Vec::new();
    let mut category = None;
    for dir in dirs {
        match role_of(dir) {
            Some(role) => {
                roles.insert(role);
            }
            None => {
                if category.is_none() && is_llavaguard_category(dir) {
                    category = Some(dir.to_string());
                }
                kept.push(*dir);
            }
        }
    }
    let stem = match file.rsplit_once('.') {
        Some((stem, _ext)) if !stem.is_empty() => stem,
        _ => file,
    };
    let stripped = strip_role_words(stem, &mut roles);
    let stem = if stripped.is_empty() { stem } else { stripped };
    kept.push(stem);
    let role = match roles.len() {
        1 => roles.into_iter().next(),
        _ => None,
    };
    PathInfo {
        pair_key: kept.join("/"),
        role,
        category,
    }
}

/// Strips role words at either end of a stem, noting the roles seen.
fn strip_role_words<'s>(mut stem: &'s str, roles: &mut BTreeSet<&'static str>) -> &'s str {
    loop {
        let before = stem;
        if let Some((head, tail)) = stem.rsplit_once(SEPARATORS) {
            if let Some(role) = role_of(tail) {
                roles.insert(role);
                stem = head;
            }
        }
        if let Some((head, tail)) = stem.split_once(SEPARATORS) {
            if let Some(role) = role_of(head) {
                roles.insert(role);
                stem = tail;
            }
        }
        if stem == before {
            return stem;
        }
    }
}

/// `O1`…`O9`, alone or followed by a non-digit (`O2_violence`, `O4: Nudity`).
fn is_llavaguard_category(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes[0] == b'O'
        && (b'1'..=b'9').contains(&bytes[1])
        && bytes.get(2).is_none_or(|b| !b.is_ascii_digit())
}

/// Sets `pair_id` on the items whose image paths share a pair key with another, different
/// path. `paths[i]` is the image path of `items[i]` (`None` when the row had none).
pub(crate) fn assign(items: &mut [Item], paths: &[Option<String>]) {
    let mut by_key: HashMap<String, BTreeSet<&str>> = HashMap::new();
    let keys: Vec<Option<String>> = paths
        .iter()
        .map(|p| p.as_deref().map(|p| analyse(p).pair_key))
        .collect();
    for (key, path) in keys.iter().zip(paths) {
        if let (Some(key), Some(path)) = (key, path) {
            by_key.entry(key.clone()).or_default().insert(path.as_str());
        }
    }
    for (item, key) in items.iter_mut().zip(keys) {
        if let Some(key) = key {
            if by_key.get(&key).is_some_and(|paths| paths.len() >= 2) {
                item.pair_id = Some(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_directories_and_suffixes_are_dropped() {
        let a = analyse("unsafe/O2/0042.jpg");
        let b = analyse("safe/O2/0042.png");
        assert_eq!(a.pair_key, "O2/0042");
        assert_eq!(a.pair_key, b.pair_key);
        assert_eq!(a.role, Some("original"));
        assert_eq!(b.role, Some("edited"));
        assert_eq!(a.category.as_deref(), Some("O2"));

        assert_eq!(analyse("img/17_orig.png").pair_key, "img/17");
        assert_eq!(analyse("img/17-Edited.png").pair_key, "img/17");
        assert_eq!(analyse("unsafe_17.png").pair_key, "17");
        assert_eq!(analyse("17_safe_edited.png").pair_key, "17");
        assert_eq!(analyse("17_safe_edited.png").role, Some("edited"));
    }

    #[test]
    fn words_that_only_contain_a_role_are_kept() {
        assert_eq!(
            analyse("unsafety/x_unsafely.png").pair_key,
            "unsafety/x_unsafely"
        );
        assert_eq!(analyse("safe.png").pair_key, "safe");
        assert_eq!(analyse("a/b/plain.jpg").role, None);
        assert_eq!(analyse("O10/x.png").category, None);
        assert_eq!(
            analyse("O4_nudity/x.png").category.as_deref(),
            Some("O4_nudity")
        );
    }
}
