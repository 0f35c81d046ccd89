//! The MIME type of an encoded image, from its first bytes.

use safeguard_core::Error;

/// The MIME type of `bytes` by their magic number: JPEG, PNG, WebP, GIF or BMP. Anything
/// else is refused here, before a request is sent, since the server would only answer with
/// a less helpful error.
pub fn sniff_mime(bytes: &[u8]) -> Result<&'static str, Error> {
    let mime = match bytes {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => "image/png",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => "image/gif",
        [b'B', b'M', ..] if bytes.len() >= 26 => "image/bmp",
        _ => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(Error::InvalidImage {
                message: format!(
                    "unrecognised image format ({} bytes, starting {}); the remote backend sends JPEG, PNG, WebP, GIF or BMP",
                    bytes.len(),
                    if head.is_empty() { "with nothing".to_string() } else { head.join(" ") }
                ),
            });
        }
    };
    Ok(mime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_magic_numbers() {
        assert_eq!(
            sniff_mime(&[0xFF, 0xD8, 0xFF, 0xE0, 0]).unwrap(),
            "image/jpeg"
        );
        assert_eq!(
            sniff_mime(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap(),
            "image/png"
        );
        assert_eq!(sniff_mime(b"RIFF\x10\0\0\0WEBPVP8 ").unwrap(), "image/webp");
        assert_eq!(sniff_mime(b"GIF89a\x01\0\x01\0").unwrap(), "image/gif");
        assert_eq!(sniff_mime(b"GIF87a\x01\0\x01\0").unwrap(), "image/gif");
        let mut bmp = b"BM".to_vec();
        bmp.resize(54, 0);
        assert_eq!(sniff_mime(&bmp).unwrap(), "image/bmp");
    }

    #[test]
    fn unknown_bytes_are_refused_with_what_was_seen() {
        for bytes in [
            &b""[..],
            b"hello world",
            b"BM",
            b"RIFF\0\0\0\0WAVE",
            b"%PDF-1.7",
        ] {
            let err = sniff_mime(bytes).unwrap_err().to_string();
            assert!(err.contains("unrecognised image format"), "{err}");
        }
        let err = sniff_mime(b"%PDF-1.7").unwrap_err().to_string();
        assert!(err.contains("25 50 44 46"), "{err}");
    }
}
