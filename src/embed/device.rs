//! The one place that chooses the compute device and the precision the weights run in.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::EmbedError;

/// Which device to run on, as written in configuration: `auto`, `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The first CUDA GPU when the binary was built with `--features cuda` and one is present,
    /// otherwise the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(EmbedError::Device(format!(
                    "unknown device `{s}` (expected `auto`, `cpu` or `cuda:N`)"
                ))),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = EmbedError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Precision of the weights and activations: `auto` (f32 on CPU, f16 on GPU), `f32`, `f16`, `bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(EmbedError::Config(format!(
                "unknown precision `{other}` (expected auto, f32, f16 or bf16)"
            ))),
        }
    }
}

impl Precision {
    /// The candle dtype this precision means on `device`.
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto if device.is_cuda() => DType::F16,
            Precision::Auto | Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// Chooses the compute device. A CUDA device asked for explicitly must exist; `auto` falls
/// back to the CPU (with a log line) when no GPU can be used.
pub fn select_device(spec: DeviceSpec) -> Result<Device, EmbedError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => cuda_device(n),
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                match cuda_device(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::warn!("CUDA present but unusable, using the CPU: {e}"),
                }
            }
            Ok(Device::Cpu)
        }
    }
}

fn cuda_device(ordinal: usize) -> Result<Device, EmbedError> {
    if !cfg!(feature = "cuda") {
        return Err(EmbedError::Device(format!(
            "device cuda:{ordinal} requested, but this binary was built without the `cuda` feature \
             (rebuild with `cargo build --release --features cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| EmbedError::Device(format!("cuda:{ordinal}: {e}")))
}

/// Human-readable name of a device, as reported by `/v1/models` and the CLI.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        Device::Metal(_) => "metal".to_string(),
    }
}

/// Name of a dtype as reported to users.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn auto_precision_is_f32_on_cpu() {
        assert_eq!(Precision::Auto.dtype(&Device::Cpu), DType::F32);
        assert_eq!(Precision::Bf16.dtype(&Device::Cpu), DType::BF16);
        assert_eq!("half".parse::<Precision>().unwrap(), Precision::F16);
    }

    #[test]
    fn auto_device_works_everywhere() {
        let d = select_device(DeviceSpec::Auto).unwrap();
        if !cfg!(feature = "cuda") {
            assert!(d.is_cpu());
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn explicit_cuda_without_feature_is_a_clear_error() {
        let e = select_device(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
}
