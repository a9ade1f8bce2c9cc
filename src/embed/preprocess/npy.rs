//! NumPy `.npy` arrays (depth maps in metres, IMU traces), read with the `npyz` crate and
//! converted to f32 in C (row-major) order.
//!
//! Accepted element types: floats (`f4`, `f8`, `f2` is refused), signed and unsigned integers
//! of 1 to 8 bytes, either byte order; C or Fortran order. The declared size is checked against
//! the bytes before anything is read, so a header cannot make the reader allocate more than the
//! upload holds.

use npyz::{DType, NpyFile, Order, TypeChar};

use super::decoder_panicked;
use crate::embed::EmbedError;
use crate::guard::contain;

/// A decoded array: values converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(msg: impl std::fmt::Display) -> EmbedError {
    EmbedError::Decode(format!(".npy: {msg}"))
}

fn values<T: npyz::Deserialize>(
    file: NpyFile<&[u8]>,
    to_f32: impl Fn(T) -> f32,
) -> Result<Vec<f32>, EmbedError> {
    Ok(contain(|| file.into_vec::<T>())
        .map_err(|panic| decoder_panicked(".npy", &panic))?
        .map_err(bad)?
        .into_iter()
        .map(to_f32)
        .collect())
}

/// Deepest nesting of brackets accepted in a header. A plain array's header needs 2 (the dict
/// and the shape tuple); npyz's header parser takes time exponential in the nesting depth (a
/// 300-byte header of nested `[` kept it busy for minutes), so deeper headers are refused
/// before it sees them.
const MAX_HEADER_DEPTH: usize = 4;

/// Checks the magic string, version and header of `.npy` bytes before npyz parses them.
fn check_header(bytes: &[u8]) -> Result<(), EmbedError> {
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(bad("not a .npy file"));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("the header is cut short"))?;
    let mut depth = 0usize;
    for &b in header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_HEADER_DEPTH {
                    return Err(bad("the header nests too deeply"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // npyz multiplies the shape out unchecked: a shape whose product overflows (found by the
    // `depth` fuzz target) must be refused here. Each value takes at least one byte.
    if let Some(dims) = shape_of(header) {
        let fits = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_some_and(|n| n <= bytes.len() as u64);
        if !fits {
            return Err(bad(format!(
                "shape {dims:?} needs more data than the file holds"
            )));
        }
    }
    Ok(())
}

/// How many values the header of `.npy` bytes declares (`None` when it cannot be read).
pub fn declared_values(bytes: &[u8]) -> Option<u64> {
    check_header(bytes).ok()?;
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = bytes.get(start..start.saturating_add(len))?;
    shape_of(header)?
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Most bytes [`read_npy`] and the f32 maps made from it hold for `.npy` bytes, the file
/// included: the decoded values (at most 8 bytes each), their f32 copy and a reordered copy.
/// A header whose shape cannot be read is costed as if every byte were a value.
pub fn decode_cost(bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    let values = declared_values(bytes).unwrap_or(len).min(len);
    len + values * (8 + 4 + 4)
}

/// The integers of the header's `'shape': (...)` tuple, when it has that form.
fn shape_of(header: &[u8]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(header).ok()?;
    let after = &text[text.find("shape")? + "shape".len()..];
    let open = after.find('(')?;
    if !after[..open]
        .trim_start_matches(['\'', '"'])
        .trim()
        .starts_with(':')
    {
        return None;
    }
    let inner = &after[open + 1..open + 1 + after[open + 1..].find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok())
        .collect()
}

/// Parses `.npy` bytes.
pub fn read_npy(bytes: &[u8]) -> Result<NpyArray, EmbedError> {
    check_header(bytes)?;
    let file = contain(|| NpyFile::new(bytes))
        .map_err(|panic| decoder_panicked(".npy", &panic))?
        .map_err(bad)?;
    let shape: Vec<usize> = file
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad("dimension too large")))
        .collect::<Result<_, _>>()?;
    let DType::Plain(ts) = file.dtype() else {
        return Err(bad("structured and sub-array dtypes are not supported"));
    };
    let size = ts.size_field() as usize;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    if count.checked_mul(size).is_none_or(|n| n > bytes.len()) {
        return Err(bad(format!(
            "shape {shape:?} of {size}-byte values needs more data than the file holds"
        )));
    }
    let order = file.order();
    let data = match (ts.type_char(), size) {
        (TypeChar::Float, 4) => values(file, |v: f32| v)?,
        (TypeChar::Float, 8) => values(file, |v: f64| v as f32)?,
        (TypeChar::Int, 1) => values(file, |v: i8| v as f32)?,
        (TypeChar::Int, 2) => values(file, |v: i16| v as f32)?,
        (TypeChar::Int, 4) => values(file, |v: i32| v as f32)?,
        (TypeChar::Int, 8) => values(file, |v: i64| v as f32)?,
        (TypeChar::Uint, 1) => values(file, |v: u8| v as f32)?,
        (TypeChar::Uint, 2) => values(file, |v: u16| v as f32)?,
        (TypeChar::Uint, 4) => values(file, |v: u32| v as f32)?,
        (TypeChar::Uint, 8) => values(file, |v: u64| v as f32)?,
        _ => return Err(bad(format!("unsupported dtype `{ts}`"))),
    };
    if data.len() != count {
        return Err(bad(format!("{} values for shape {shape:?}", data.len())));
    }
    let data = match order {
        Order::C => data,
        Order::Fortran => fortran_to_c(&data, &shape),
    };
    Ok(NpyArray { shape, data })
}

/// Reorders Fortran-order (first index fastest) values into C order.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = shape.len();
    // Strides of the Fortran layout.
    let mut strides = vec![1usize; n];
    for i in 1..n {
        strides[i] = strides[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; n];
    for _ in 0..data.len() {
        out.push(data[idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        // Advance the C-order multi-index (last index fastest).
        for d in (0..n).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_types_orders_and_refuses_short_data() {
        let le: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = read_npy(&npy("<f4", false, "(2, 3)", &le)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Fortran order: the same bytes are the transpose's C order.
        let f = read_npy(&npy("<f4", true, "(2, 3)", &le)).unwrap();
        assert_eq!(f.data, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let be: Vec<u8> = [7.5f64, -1.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            read_npy(&npy(">f8", false, "(2,)", &be)).unwrap().data,
            vec![7.5, -1.0]
        );
        let u16s: Vec<u8> = [1000u16, 65535]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            read_npy(&npy("<u2", false, "(1, 2)", &u16s)).unwrap().data,
            vec![1000.0, 65535.0]
        );
        let err = read_npy(&npy("<f4", false, "(1000000, 1000000)", &le)).unwrap_err();
        assert!(
            err.to_string().contains("more data than the file holds"),
            "{err}"
        );
        assert!(read_npy(&npy("<f4", false, "(2, 3)", &le[..20])).is_err());
        assert!(read_npy(&npy("|b1", false, "(2,)", &[0, 1])).is_err());
        assert!(read_npy(b"\x93NUMPY\x01").is_err());
    }

    /// Found by the `imu` and `depth` fuzz targets: nested brackets in a header kept npyz's
    /// parser busy for minutes. They are refused before parsing now.
    #[test]
    fn deeply_nested_headers_are_refused_before_parsing() {
        let nested = format!("(2, {}1{})", "[".repeat(120), "]".repeat(120));
        let err = read_npy(&npy("<f4", false, &nested, &[0; 8])).unwrap_err();
        assert!(err.to_string().contains("nests too deeply"), "{err}");
        // Unbalanced, as the fuzzer wrote it.
        let open = format!("(200, 551, {}0.7", "[".repeat(80));
        assert!(read_npy(&npy("<f4", false, &open, &[0; 8])).is_err());
        // Versions 2 and 3 carry a 4-byte header length; a length past the end is refused.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&1000u32.to_le_bytes());
        v2.extend_from_slice(b"{'descr': '<f4'");
        assert!(read_npy(&v2).unwrap_err().to_string().contains("cut short"));
        assert!(read_npy(b"\x93NUMPY\x09\x00\x10\x00{}").is_err());
    }

    /// Found by the `depth` fuzz target: a shape whose product overflows made npyz's header
    /// reading panic (an unchecked multiplication); such shapes are refused before npyz.
    #[test]
    fn shapes_whose_size_overflows_are_refused_before_parsing() {
        let huge = "(51230947761132375590, 8)";
        assert!(read_npy(&npy(">u8", false, huge, &[0; 8])).is_err());
        let err = read_npy(&npy(">u8", false, "(4611686018427387904, 8)", &[0; 8])).unwrap_err();
        assert!(
            err.to_string().contains("more data than the file holds"),
            "{err}"
        );
        assert_eq!(
            shape_of(b"{'descr': '<f4', 'shape': (2, 3), }"),
            Some(vec![2, 3])
        );
        assert_eq!(
            shape_of(b"{'descr': '<f4', 'shape': (7,), }"),
            Some(vec![7])
        );
        assert_eq!(shape_of(b"{'descr': '<f4', 'shape': (), }"), Some(vec![]));
    }

    /// Found by the `imu` fuzz target (kept in its seeds): dimensions written as sums, which the
    /// pre-check does not read but npyz's header parser evaluates, overflow npyz's product of
    /// the shape. The panic is contained and the file is a decode error.
    #[test]
    fn a_panic_inside_npyz_is_a_decode_error() {
        let shape = "(21-8,6666666666666,666666666666+2)";
        assert_eq!(shape_of(format!("'shape': {shape}").as_bytes()), None);
        let err = read_npy(&npy("<f8", true, shape, &[0; 64])).unwrap_err();
        assert!(matches!(err, EmbedError::Decode(_)), "{err}");
        let seed = include_bytes!("../../../fuzz/seeds/imu/npy_regress_shape_overflow");
        assert!(matches!(read_npy(seed), Err(EmbedError::Decode(_))));
    }
}
