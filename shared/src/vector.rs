//! Vector math shared by the services that make and store embeddings.

/// Scales `v` to unit length in place; the zero vector stays zero (no division by zero, no NaN).
/// The norm is summed in `f64`, so that large finite values cannot overflow it to infinity.
pub fn l2_normalise(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_length_without_overflow_and_zero_stays_zero() {
        let mut v = vec![3.0e30_f32, 4.0e30];
        l2_normalise(&mut v);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
        let mut z = vec![0.0_f32; 5];
        l2_normalise(&mut z);
        assert!(z.iter().all(|x| *x == 0.0));
    }
}
