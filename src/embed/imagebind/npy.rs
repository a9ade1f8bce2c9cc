//! A reader for NumPy `.npy` arrays (format versions 1 to 3, C or Fortran order, little- or
//! big-endian integers and floats), enough for depth maps and IMU traces saved with `np.save`.

use crate::embed::EmbedError;

/// A decoded array: values converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(msg: impl Into<String>) -> EmbedError {
    EmbedError::Decode(format!(".npy: {}", msg.into()))
}

/// Parses `.npy` bytes.
pub fn read_npy(bytes: &[u8]) -> Result<NpyArray, EmbedError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("no descr"))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order")
        .map(|v| v.trim().starts_with("True"))
        .ok_or_else(|| bad("no fortran_order"))?;
    let shape_s = dict_value(header, "shape").ok_or_else(|| bad("no shape"))?;
    let shape_s = shape_s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad dimension `{s}`")))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let (endian, kind) = descr.split_at(1.min(descr.len()));
    let little = match endian {
        "<" | "|" | "=" => true,
        ">" => false,
        _ => return Err(bad(format!("unsupported dtype `{descr}`"))),
    };
    let size: usize = kind
        .get(1..)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("unsupported dtype `{descr}`")))?;
    let body = &bytes[start + header_len..];
    let need = count
        .checked_mul(size)
        .ok_or_else(|| bad("array too large"))?;
    if body.len() < need {
        return Err(bad(format!(
            "truncated data: {} bytes for {count} values of {size} bytes",
            body.len()
        )));
    }
    let word = |i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        let src = &body[i * size..(i + 1) * size];
        if little {
            w[..size].copy_from_slice(src);
        } else {
            for (j, b) in src.iter().rev().enumerate() {
                w[j] = *b;
            }
        }
        w
    };
    let conv: fn([u8; 8]) -> f32 = match (kind.as_bytes()[0], size) {
        (b'f', 4) => |w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]),
        (b'f', 8) => |w| f64::from_le_bytes(w) as f32,
        (b'f', 2) => |w| half_to_f32(u16::from_le_bytes([w[0], w[1]])),
        (b'u', 1) => |w| w[0] as f32,
        (b'i', 1) => |w| w[0] as i8 as f32,
        (b'u', 2) => |w| u16::from_le_bytes([w[0], w[1]]) as f32,
        (b'i', 2) => |w| i16::from_le_bytes([w[0], w[1]]) as f32,
        (b'u', 4) => |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f32,
        (b'i', 4) => |w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f32,
        (b'u', 8) => |w| u64::from_le_bytes(w) as f32,
        (b'i', 8) => |w| i64::from_le_bytes(w) as f32,
        _ => return Err(bad(format!("unsupported dtype `{descr}`"))),
    };
    let mut data: Vec<f32> = (0..count).map(|i| conv(word(i))).collect();
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape);
    }
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in the header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = data.len();
    let mut out = vec![0f32; n];
    let mut idx = vec![0usize; shape.len()];
    for v in out.iter_mut() {
        // Fortran offset of the current C-order index.
        let mut off = 0;
        let mut stride = 1;
        for (i, &d) in idx.iter().zip(shape) {
            off += i * stride;
            stride *= d;
        }
        *v = data[off];
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e as i32 - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, fortran: bool, body: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_dtypes_and_orders() {
        let f: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = read_npy(&npy("<f4", "(2, 3)", false, &f)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
        let a = read_npy(&npy("<f4", "(2, 3)", true, &f)).unwrap();
        assert_eq!(a.data, vec![1., 3., 5., 2., 4., 6.]);
        let u: Vec<u8> = [1000u16, 65535]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(
            read_npy(&npy(">u2", "(2,)", false, &u)).unwrap().data,
            vec![1000., 65535.]
        );
        let d: Vec<u8> = [0.5f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read_npy(&npy("<f8", "()", false, &d)).unwrap().data,
            vec![0.5]
        );
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(read_npy(b"not an npy file").is_err());
        assert!(read_npy(&npy("<f4", "(4,)", false, &[0; 8])).is_err());
        assert!(read_npy(&npy("<c8", "(1,)", false, &[0; 8])).is_err());
        assert!(read_npy(&npy("|O", "(1,)", false, &[0; 8])).is_err());
    }
}
