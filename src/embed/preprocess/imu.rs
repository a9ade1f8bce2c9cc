//! IMU recordings for ImageBind: 6 channels (accelerometer x, y, z in m/s², gyroscope x, y, z
//! in rad/s) resampled to the tower's 2000 samples.
//!
//! Accepted files:
//! - CSV, one row per sample, comma-separated, an optional header row: either six columns
//!   (`ax, ay, az, gx, gy, gz`, samples taken as evenly spaced) or seven with a leading
//!   timestamp (`t, ax, ay, az, gx, gy, gz`, any unit, strictly increasing);
//! - `.npy` of shape `[6, T]` or `[T, 6]` (evenly spaced samples).
//!
//! ImageBind's IMU tower was trained on Ego4D clips of 2000 samples (10 s at 200 Hz), fed as
//! they are (the official code ships no IMU loader). A recording of any other length is
//! resampled linearly onto 2000 evenly spaced instants from its first to its last sample,
//! exactly as `numpy.interp(numpy.linspace(t[0], t[-1], 2000), t, x)` computes it in float64;
//! a recording of exactly 2000 evenly spaced samples passes unchanged. Units are not converted.

use super::npy::read_npy;
use crate::embed::EmbedError;

pub const CHANNELS: usize = 6;
pub const LEN: usize = 2000;
/// Most samples accepted per recording.
pub const MAX_SAMPLES: usize = 1_000_000;

fn invalid(msg: String) -> EmbedError {
    EmbedError::InvalidInput(format!("IMU: {msg}"))
}

/// A decoded recording: channel-major samples and their timestamps (None: evenly spaced).
struct Recording {
    channels: Vec<Vec<f64>>,
    times: Option<Vec<f64>>,
}

/// Six sensor columns, optionally after a timestamp column.
fn check_columns(n: usize) -> Result<(), EmbedError> {
    if n == CHANNELS || n == CHANNELS + 1 {
        return Ok(());
    }
    Err(invalid(format!(
        "{n} columns; expected 6 (ax, ay, az, gx, gy, gz) or 7 (t, ax, ay, az, gx, gy, gz)"
    )))
}

fn parse_csv(text: &str) -> Result<Recording, EmbedError> {
    let mut columns: Option<usize> = None;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f64>, _> = fields.iter().map(|f| f.parse::<f64>()).collect();
        let Ok(values) = parsed else {
            if rows.is_empty() && columns.is_none() {
                columns = Some(fields.len()); // header row
                continue;
            }
            return Err(invalid(format!("line {}: not a number", i + 1)));
        };
        let n = *columns.get_or_insert(values.len());
        if values.len() != n {
            return Err(invalid(format!(
                "line {}: {} columns, the file's first row has {n}",
                i + 1,
                values.len()
            )));
        }
        check_columns(n)?; // fail on the first row, not after reading the file
        rows.push(values);
        if rows.len() > MAX_SAMPLES {
            return Err(invalid(format!("more than {MAX_SAMPLES} samples")));
        }
    }
    let n = columns.unwrap_or(CHANNELS);
    check_columns(n)?; // a file of only a header row
    let first = n - CHANNELS;
    let channels = (first..n)
        .map(|c| rows.iter().map(|r| r[c]).collect())
        .collect();
    let times = (first == 1).then(|| rows.iter().map(|r| r[0]).collect());
    Ok(Recording { channels, times })
}

fn parse_npy(bytes: &[u8]) -> Result<Recording, EmbedError> {
    let a = read_npy(bytes)?;
    let data: Vec<f64> = a.data.iter().map(|&v| v as f64).collect();
    let channels = match a.shape[..] {
        [CHANNELS, t] => (0..CHANNELS)
            .map(|c| data[c * t..(c + 1) * t].to_vec())
            .collect(),
        [t, CHANNELS] => (0..CHANNELS)
            .map(|c| (0..t).map(|s| data[s * CHANNELS + c]).collect())
            .collect(),
        ref s => {
            return Err(invalid(format!(
                "array must be [6, T] or [T, 6], got {s:?}"
            )))
        }
    };
    Ok(Recording {
        channels,
        times: None,
    })
}

/// `numpy.linspace(start, stop, n)`: `i * step + start`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `numpy.interp(x, xp, fp)` for increasing `xp` and `x` inside `[xp[0], xp[-1]]`.
fn interp(x: &[f64], xp: &[f64], fp: &[f64]) -> Vec<f64> {
    let last = xp.len() - 1;
    let mut j = 0;
    x.iter()
        .map(|&v| {
            while j < last && xp[j + 1] <= v {
                j += 1;
            }
            if j == last || xp[j] == v {
                fp[j]
            } else {
                let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
                slope * (v - xp[j]) + fp[j]
            }
        })
        .collect()
}

/// Decodes IMU bytes into the `[6, 2000]` channel-major trace.
pub fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, EmbedError> {
    let rec = if bytes.starts_with(b"\x93NUMPY") {
        parse_npy(bytes)?
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| EmbedError::UnsupportedFormat("IMU input must be CSV or .npy".into()))?;
        parse_csv(text)?
    };
    let t = rec.channels[0].len();
    if t < 2 {
        return Err(invalid(format!("{t} samples; at least 2 are needed")));
    }
    if t > MAX_SAMPLES {
        return Err(invalid(format!("{t} samples; at most {MAX_SAMPLES}")));
    }
    if rec.channels.iter().flatten().any(|v| !v.is_finite()) {
        return Err(invalid("non-finite values (NaN or infinity)".into()));
    }
    let times = match rec.times {
        None if t == LEN => {
            return Ok(rec.channels.iter().flatten().map(|&v| v as f32).collect());
        }
        None => (0..t).map(|i| i as f64).collect(),
        Some(ts) => {
            if ts.iter().any(|v| !v.is_finite()) || ts.windows(2).any(|w| w[1] <= w[0]) {
                return Err(invalid(
                    "timestamps must be finite and strictly increasing".into(),
                ));
            }
            ts
        }
    };
    let grid = linspace(times[0], times[t - 1], LEN);
    Ok(rec
        .channels
        .iter()
        .flat_map(|c| interp(&grid, &times, c))
        .map(|v| v as f32)
        .collect())
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
        let e = preprocess(b"1,2,3\n4,5,6\n").unwrap_err().to_string();
        assert!(e.contains("3 columns"), "{e}");
        let e = preprocess(b"1,2,3,4,5,6\n").unwrap_err().to_string();
        assert!(e.contains("1 samples"), "{e}");
        let bad = csv.replace("7,1,2", "7,x,2");
        assert!(preprocess(bad.as_bytes()).is_err());
        let nan = csv.replace("7,1,2", "7,NaN,2");
        let e = preprocess(nan.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
    }

    #[test]
    fn resamples_linearly_over_time() {
        // 3 samples of a ramp at uneven times: the resampled ramp is linear in time.
        let csv = "t,ax,ay,az,gx,gy,gz\n0,0,0,0,0,0,0\n1,10,0,0,0,0,0\n4,40,0,0,0,0,0\n";
        let v = preprocess(csv.as_bytes()).unwrap();
        for (i, x) in v[..LEN].iter().enumerate() {
            let want = 40.0 * i as f64 / (LEN - 1) as f64;
            assert!((*x as f64 - want).abs() < 1e-4, "{i}: {x} vs {want}");
        }
        let back = "t,a,b,c,d,e,f\n0,0,0,0,0,0,0\n0,1,0,0,0,0,0\n";
        let e = preprocess(back.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("strictly increasing"), "{e}");
    }
}
