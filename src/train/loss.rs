//! Contrastive losses: the symmetric InfoNCE of CLIP and ImageBind on L2-normalised embeddings
//! with a learned logit scale, and the similarity matrix used to mine hard negatives.

use candle_core::{DType, Result, Tensor};
use candle_nn::loss::cross_entropy;

use crate::embed::imagebind::config::MAX_LOGIT_SCALE;
use crate::embed::imagebind::model::normalize_rows;

/// `exp(log_scale)` clamped at [`MAX_LOGIT_SCALE`] (as the official `LearnableLogitScaling`);
/// differentiable in `log_scale` below the clamp.
pub fn logit_scale(log_scale: &Tensor) -> Result<Tensor> {
    log_scale.exp()?.minimum(MAX_LOGIT_SCALE)
}

/// Symmetric InfoNCE of paired rows: `(CE(s·A·Bᵀ, diag) + CE(s·B·Aᵀ, diag)) / 2` with `A`, `B`
/// the row-normalised `[n, d]` embeddings and `s = min(exp(log_scale), 100)`; `log_scale` is a
/// scalar tensor. Row `i` of `a` and row `i` of `b` are the positive pair; every other row of the
/// batch is a negative.
pub fn info_nce(a: &Tensor, b: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
    let (n, _) = a.dims2()?;
    if b.dims2()?.0 != n {
        candle_core::bail!("info_nce needs as many rows in both sides");
    }
    let a = normalize_rows(a)?;
    let b = normalize_rows(b)?;
    let logits = a.matmul(&b.t()?)?.broadcast_mul(&logit_scale(log_scale)?)?;
    let targets = Tensor::arange(0u32, n as u32, a.device())?;
    let ab = cross_entropy(&logits, &targets)?;
    let ba = cross_entropy(&logits.t()?.contiguous()?, &targets)?;
    (ab + ba)? / 2.0
}

/// Cosine similarities `[n_a * n_b]` (row-major) of two sets of embeddings, as f32 on the CPU,
/// outside any autograd graph: the input of [`super::sampler::hard_batches`].
pub fn similarity_matrix(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let a = normalize_rows(&a.detach())?;
    let b = normalize_rows(&b.detach())?;
    a.matmul(&b.t()?)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ln_sum_exp(xs: &[f64]) -> f64 {
        xs.iter().map(|x| x.exp()).sum::<f64>().ln()
    }

    #[test]
    fn info_nce_of_a_2x2_case_by_hand() {
        let dev = Device::Cpu;
        // Already unit rows (the normalisation must not change them), and one row scaled by 3
        // (it must): cosines a0·b0 = 1, a0·b1 = 0, a1·b0 = 0.6, a1·b1 = 0.8.
        let a = Tensor::new(&[[1f32, 0.], [0.6, 0.8]], &dev).unwrap();
        let b = Tensor::new(&[[3f32, 0.], [0., 1.]], &dev).unwrap();
        let s = 2.0f64;
        let log_s = Tensor::new(s.ln() as f32, &dev).unwrap();
        let got = info_nce(&a, &b, &log_s)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let l = [[1.0 * s, 0.0], [0.6 * s, 0.8 * s]];
        // Rows: a against all b; columns: b against all a.
        let ab = ((ln_sum_exp(&l[0]) - l[0][0]) + (ln_sum_exp(&l[1]) - l[1][1])) / 2.0;
        let ba = ((ln_sum_exp(&[l[0][0], l[1][0]]) - l[0][0])
            + (ln_sum_exp(&[l[0][1], l[1][1]]) - l[1][1]))
            / 2.0;
        let want = (ab + ba) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn logit_scale_is_clamped_at_100_and_learns_below_it() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.], [0.6, 0.8]], &dev).unwrap();
        let b = Tensor::new(&[[0.8f32, 0.6], [0., 1.]], &dev).unwrap();
        let big = Var::new(10f32, &dev).unwrap(); // exp(10) > 100
        assert_eq!(
            logit_scale(big.as_tensor())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            100.0
        );
        let g = info_nce(&a, &b, big.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g.get(big.as_tensor()).unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        let t = Var::new((1.0f32 / 0.07).ln(), &dev).unwrap();
        let g = info_nce(&a, &b, t.as_tensor()).unwrap().backward().unwrap();
        assert_ne!(
            g.get(t.as_tensor()).unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }

    #[test]
    fn similarity_matrix_is_row_major_cosines() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[2f32, 0.], [0., 1.]], &dev).unwrap();
        let b = Tensor::new(&[[1f32, 1.], [0., 3.], [5., 0.]], &dev).unwrap();
        let s = similarity_matrix(&a, &b).unwrap();
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let want = [r, 0., 1., r, 1., 0.];
        for (x, y) in s.iter().zip(want) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}
