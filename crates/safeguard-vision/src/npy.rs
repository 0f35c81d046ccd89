//! A minimal writer for NumPy's `.npy` format (version 1.0, little-endian `float32`), used to
//! dump `pixel_values` for parity checks against the Python reference.

use std::io::{self, Write};

/// Writes `data` as a C-ordered little-endian `float32` array of the given `shape`.
///
/// Errors with `InvalidInput` when the product of `shape` is not `data.len()`.
pub fn write_f32(mut out: impl Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shape {shape:?} does not hold {} values", data.len()),
        ));
    }
    out.write_all(&header("<f4", shape))?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&bytes)
}

/// The magic, version, header length and the padded header dictionary.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' must be a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_readable() {
        let mut buf = Vec::new();
        write_f32(&mut buf, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let header_len = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let dict = std::str::from_utf8(&buf[10..10 + header_len]).unwrap();
        assert!(dict.contains("'shape': (2, 3)"), "{dict}");
        assert_eq!(buf.len(), 10 + header_len + 24);
        assert_eq!(
            &buf[10 + header_len + 4..10 + header_len + 8],
            &1f32.to_le_bytes()
        );
    }

    #[test]
    fn rejects_wrong_shape() {
        assert!(write_f32(Vec::new(), &[2, 2], &[1.0]).is_err());
    }
}
