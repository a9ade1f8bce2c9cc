//! Building blocks the model families share: fused multi-head self-attention, linear layers
//! whose weights are kept transposed for the matrix product, a LayerNorm that stays
//! differentiable when trained, and running a tower over a batch in `max_batch` chunks into
//! unit-norm f32 rows on the CPU.
//!
//! candle's fused softmax and LayerNorm kernels (`softmax_last_dim`, and `LayerNorm::forward` on
//! contiguous inputs) have no backward pass: applied to tensors that depend on trained variables
//! they silently cut the gradient. The blocks here use the fused kernels for inference and the
//! composed, differentiable forms whenever an input tracks gradients.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::Linear;

/// Multi-head self-attention with one fused q/k/v projection, the 1/sqrt(head_dim) scale folded
/// into the query rows, and optional learned extra key/value (`bias_k`/`bias_v`).
#[derive(Debug, Clone)]
pub struct FusedSelfAttention {
    qkv: TransposedLinear,
    out_proj: TransposedLinear,
    /// Learned extra key and value, `[1, heads, 1, head_dim]` each.
    bias_kv: Option<(Tensor, Tensor)>,
    num_heads: usize,
    head_dim: usize,
}

impl FusedSelfAttention {
    /// `weight` is `[3 * dim, dim]` (q, k, v rows), `bias` `[3 * dim]`; `bias_kv` are the extra
    /// key and value as `[.., dim]` tensors of `dim` values each.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        out_proj: Linear,
        num_heads: usize,
        bias_kv: Option<(Tensor, Tensor)>,
    ) -> Result<Self> {
        let dim = weight.dim(1)?;
        let head_dim = dim / num_heads;
        let scale = (head_dim as f64).powf(-0.5);
        // (xWq + bq)s = x(Wq s) + bq s.
        let fold = |t: &Tensor| -> Result<Tensor> {
            Tensor::cat(
                &[
                    &(t.narrow(0, 0, dim)? * scale)?,
                    &t.narrow(0, dim, 2 * dim)?,
                ],
                0,
            )
        };
        let bias = bias.as_ref().map(fold).transpose()?;
        let split = |t: Tensor| t.reshape((1, num_heads, 1, head_dim));
        let bias_kv = match bias_kv {
            Some((k, v)) => Some((split(k)?, split(v)?)),
            None => None,
        };
        Ok(Self {
            qkv: TransposedLinear::new(&Linear::new(fold(&weight)?, bias))?,
            out_proj: TransposedLinear::new(&out_proj)?,
            bias_kv,
            num_heads,
            head_dim,
        })
    }

    /// Self-attention over `[batch, n, dim]`; `mask` is an additive `[n, n]` mask.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, c) = xs.dims3()?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, n, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?; // 3, b, heads, n, head_dim
        let q = qkv.i(0)?.contiguous()?;
        let mut k = qkv.i(1)?.contiguous()?;
        let mut v = qkv.i(2)?.contiguous()?;
        if let Some((bk, bv)) = &self.bias_kv {
            let shape = (b, self.num_heads, 1, self.head_dim);
            k = Tensor::cat(&[&k, &bk.broadcast_as(shape)?.contiguous()?], 2)?;
            v = Tensor::cat(&[&v, &bv.broadcast_as(shape)?.contiguous()?], 2)?;
        }
        let mut attn = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            // The extra key of bias_kv is never masked (PyTorch pads the mask with a zero column).
            let mask = if self.bias_kv.is_some() {
                let zeros = Tensor::zeros((n, 1), mask.dtype(), mask.device())?;
                Tensor::cat(&[mask, &zeros], 1)?
            } else {
                mask.clone()
            };
            attn = attn.broadcast_add(&mask)?;
        }
        let attn = if attn.track_op() {
            candle_nn::ops::softmax(&attn, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&attn)?
        };
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.out_proj.forward(&out)
    }
}

/// A linear layer whose weight is kept transposed, `[in, out]` and contiguous, so that the
/// matrix product reads it in the order `gemm` packs it: with few rows (one text, one image)
/// `gemm`'s AVX-512 path would otherwise re-pack the whole weight on every call, about 2.5x
/// slower per item for CLIP ViT-B/32 (BENCHMARKS.md). The copy is made once, at load; training
/// rebuilds its model from the variables every step, so gradients flow through it.
#[derive(Debug, Clone)]
pub struct TransposedLinear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl TransposedLinear {
    pub fn new(linear: &Linear) -> Result<Self> {
        Ok(Self {
            weight_t: linear.weight().t()?.contiguous()?,
            bias: linear.bias().cloned(),
        })
    }
}

impl Module for TransposedLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = xs.broadcast_matmul(&self.weight_t)?;
        match &self.bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// `nn.LayerNorm` with weight and bias: candle's fused kernel when nothing tracks gradients,
/// the composed form (same formula, differentiable) when the input or a weight does.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            inner: candle_nn::LayerNorm::new(weight, bias, eps),
            eps,
        }
    }

    /// Loads `weight` and `bias` of `size` values from `vb`.
    pub fn load(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.))?;
        Ok(Self::new(weight, bias, eps))
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.inner.weight();
        let b = self.inner.bias().expect("LayerNorm::new sets a bias");
        if xs.track_op() || w.track_op() || b.track_op() {
            candle_nn::ops::layer_norm_slow(xs, w, b, self.eps as f32)
        } else {
            self.inner.forward(xs)
        }
    }
}

/// Additive causal mask `[seq, seq]`: -inf above the diagonal.
pub fn causal_mask(seq: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}

/// Divides each row by its L2 norm.
pub fn l2_normalize_rows(xs: &Tensor) -> Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// Runs `forward` over `items` in chunks of `max_batch` and returns the outputs as unit-norm
/// f32 rows on the CPU, concatenated in input order.
pub fn forward_in_chunks<T, E>(
    items: &[T],
    max_batch: usize,
    mut forward: impl FnMut(&[T]) -> std::result::Result<Tensor, E>,
) -> std::result::Result<Tensor, E>
where
    E: From<candle_core::Error>,
{
    let mut parts = Vec::with_capacity(items.len().div_ceil(max_batch.max(1)));
    for chunk in items.chunks(max_batch.max(1)) {
        let out = forward(chunk)?;
        parts.push(l2_normalize_rows(&out.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::data::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn transposed_linear_computes_what_linear_does() {
        let w = seeded(&[48, 32], 1);
        let b = seeded(&[48], 2);
        for shape in [&[5, 32][..], &[3, 7, 32], &[2, 64, 32]] {
            let x = seeded(shape, 3);
            for bias in [Some(b.clone()), None] {
                let plain = Linear::new(w.clone(), bias.clone());
                let want = plain.forward(&x).unwrap();
                let got = TransposedLinear::new(&plain).unwrap().forward(&x).unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = (got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-4, "{shape:?} bias {}: {diff}", bias.is_some());
            }
        }
    }
}
