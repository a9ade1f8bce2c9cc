//! IMU recordings for ImageBind: 6 channels (accelerometer x, y, z, gyroscope x, y, z) of 2000
//! samples, from a CSV file (one row per sample, six numeric columns, an optional header row) or
//! a `.npy` array of shape `[6, T]` or `[T, 6]`.
//!
//! The official code ships no IMU loader and feeds the `[6, 2000]` trace as it is; recordings of
//! another length are refused rather than silently resampled.

use crate::embed::imagebind::npy::read_npy;
use crate::embed::EmbedError;

pub const CHANNELS: usize = 6;
pub const LEN: usize = 2000;

fn invalid(msg: String) -> EmbedError {
    EmbedError::InvalidInput(format!("IMU: {msg}"))
}

/// Decodes IMU bytes into the `[6, 2000]` channel-major trace.
pub fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
    let (data, channels_first, t) = if bytes.starts_with(b"\x93NUMPY") {
        let a = read_npy(bytes)?;
        match a.shape[..] {
            [CHANNELS, t] => (a.data, true, t),
            [t, CHANNELS] => (a.data, false, t),
            ref s => {
                return Err(invalid(format!(
                    "array must be [6, T] or [T, 6], got {s:?}"
                )))
            }
        }
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| EmbedError::UnsupportedFormat("IMU input must be CSV or .npy".into()))?;
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != CHANNELS {
                return Err(invalid(format!(
                    "line {}: {} columns, expected {CHANNELS}",
                    i + 1,
                    fields.len()
                )));
            }
            let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
            match parsed {
                Ok(v) => rows.push(v),
                Err(_) if i == 0 && rows.is_empty() => {} // header row
                Err(_) => return Err(invalid(format!("line {}: not a number", i + 1))),
            }
        }
        let t = rows.len();
        (rows.concat(), false, t)
    };
    if t != LEN {
        return Err(invalid(format!("{t} samples, expected {LEN}")));
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(invalid("non-finite values".into()));
    }
    Ok(if channels_first {
        data
    } else {
        (0..CHANNELS)
            .flat_map(|c| (0..t).map(move |s| (c, s)))
            .map(|(c, s)| data[s * CHANNELS + c])
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_with_header_and_rejects_bad_shapes() {
        let mut csv = String::from("ax,ay,az,gx,gy,gz\n");
        for s in 0..LEN {
            csv.push_str(&format!("{s},1,2,3,4,5\n"));
        }
        let v = preprocess(csv.as_bytes()).unwrap();
        assert_eq!(v.len(), CHANNELS * LEN);
        assert_eq!((v[0], v[1], v[LEN], v[5 * LEN]), (0.0, 1.0, 1.0, 5.0));
        assert!(preprocess(b"1,2,3\n").is_err());
        assert!(preprocess(b"1,2,3,4,5,6\n").is_err()); // one sample
        let bad = csv.replace("7,1,2", "7,x,2");
        assert!(preprocess(bad.as_bytes()).is_err());
    }
}
