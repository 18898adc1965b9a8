//! Distance kernels over `f32` slices, written so that the compiler vectorises them.
//!
//! Eight independent accumulators break the dependency chain of a single running sum, so the
//! loop compiles to packed multiply-adds on any target. On x86-64 an explicit AVX2 + FMA build
//! is chosen at run time when the CPU has them. That build is the crate's only `unsafe` code:
//! the call into it (sound once the CPU's features are checked) and, inside the `avx2` module,
//! the unaligned 8-float loads and stores of the intrinsics. `#[allow(unsafe_code)]` sits on
//! those two items alone, and every `unsafe` block says why it is sound (`SAFETY:`).
//!
//! The AVX2 build scores a tile of 3 rows against up to 4 queries at once: each row chunk read
//! from the cache feeds 4 multiply-adds instead of 1, which is what bounds a batch of queries
//! (scored one query a pass, the loads of rows from L2 held the multiply-adds to about a
//! quarter of what the FMA units can do). Every (query, row) score is the same sequence of operations whatever
//! tile it falls in, so scores do not depend on how many queries share a call.

const LANES: usize = 8;

/// What a scan scores rows by; higher is better for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The dot product (cosine similarity of unit vectors).
    Dot,
    /// Minus the squared Euclidean distance.
    NegL2Squared,
}

/// Scores `q` against every row of `rows` (row-major, `q.len()` floats a row) into `out`.
///
/// On x86-64 CPUs with AVX2 and FMA the loop runs as 8-wide fused multiply-adds; elsewhere the
/// portable build of the same code runs.
pub(crate) fn score_rows(kernel: Kernel, q: &[f32], rows: &[f32], out: &mut [f32]) {
    score_rows_many(kernel, q, q.len(), rows, out);
}

/// Scores every query of `queries` (row-major, `dim` floats each) against every row of `rows`
/// (row-major, `dim` floats each) into `out`, query by query: `out[j * n + i]` is query `j`
/// against row `i`, with `n` rows. Each score equals what [`score_rows`] gives for that query
/// alone, bit for bit.
pub(crate) fn score_rows_many(
    kernel: Kernel,
    queries: &[f32],
    dim: usize,
    rows: &[f32],
    out: &mut [f32],
) {
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    let n = rows.len() / dim;
    debug_assert_eq!(rows.len(), n * dim);
    debug_assert_eq!(queries.len() / dim * n, out.len());
    // `std` checks the CPU once and caches the answer.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 and FMA, the only features `score_rows_avx2` is compiled for.
        unsafe {
            score_rows_avx2(kernel, queries, dim, rows, out);
        }
        return;
    }
    if n == 0 {
        return;
    }
    for (q, out) in queries.chunks_exact(dim).zip(out.chunks_exact_mut(n)) {
        score_rows_with::<false>(kernel, q, rows, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn score_rows_avx2(kernel: Kernel, queries: &[f32], dim: usize, rows: &[f32], out: &mut [f32]) {
    match kernel {
        Kernel::Dot => avx2::score_rows_many::<false>(queries, dim, rows, out),
        Kernel::NegL2Squared => avx2::score_rows_many::<true>(queries, dim, rows, out),
    }
}

/// The AVX2 + FMA kernel with explicit 8-wide vectors: the compiler does not vectorise the
/// portable loop well enough on its own (it mixes scalar and packed operations), nor does it
/// block over queries.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
        _mm256_sub_ps,
    };

    use super::{finish, LANES};

    /// Loads `LANES` floats from `p`.
    ///
    /// # Safety
    ///
    /// `p..p + LANES` must lie inside one slice.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller keeps the 8 floats inside a slice; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn step<const L2: bool>(q: __m256, r: __m256, acc: __m256) -> __m256 {
        if L2 {
            let d = _mm256_sub_ps(q, r);
            _mm256_fmadd_ps(d, d, acc)
        } else {
            _mm256_fmadd_ps(q, r, acc)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lanes(v: __m256) -> [f32; LANES] {
        let mut out = [0.0_f32; LANES];
        // SAFETY: `out` holds exactly the 8 floats written; storeu has no alignment need.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// See [`super::score_rows_many`]. A tile is `Q` queries by `R` rows, sized so that its
    /// `Q x R` accumulators, its `R` row chunks and one query chunk fit the 16 vector
    /// registers (spilled accumulators halve the speed): 4 x 3 for the dot product, 2 x 4 for
    /// L2, whose subtraction needs a register of its own.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn score_rows_many<const L2: bool>(
        queries: &[f32],
        dim: usize,
        rows: &[f32],
        out: &mut [f32],
    ) {
        let n = rows.len() / dim;
        let nq = queries.len() / dim;
        let mut j = 0;
        while j < nq {
            let tile = (if L2 { 2 } else { 4 }).min(nq - j);
            let qs = &queries[j * dim..(j + tile) * dim];
            let out = &mut out[j * n..(j + tile) * n];
            match (L2, tile) {
                (false, 4) => queries_tile::<4, 3, L2>(qs, dim, rows, out),
                (false, 3) => queries_tile::<3, 3, L2>(qs, dim, rows, out),
                (false, 2) => queries_tile::<2, 3, L2>(qs, dim, rows, out),
                (false, _) => queries_tile::<1, 3, L2>(qs, dim, rows, out),
                (true, 2) => queries_tile::<2, 4, L2>(qs, dim, rows, out),
                (true, _) => queries_tile::<1, 4, L2>(qs, dim, rows, out),
            }
            j += tile;
        }
    }

    /// `Q` queries (`queries`, `Q x dim`) against every row of `rows`, `R` rows at a time, then
    /// the rows left over one at a time, into `out` (`Q x n`, query by query).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn queries_tile<const Q: usize, const R: usize, const L2: bool>(
        queries: &[f32],
        dim: usize,
        rows: &[f32],
        out: &mut [f32],
    ) {
        let n = rows.len() / dim;
        // Every pointer below is to a query of these `Q` or a row of these `n`, `dim` floats
        // long, read at `c..c + LANES` with `c + LANES <= dim`.
        assert!(queries.len() == Q * dim && out.len() == Q * n && dim > 0);
        let q = |t: usize| &queries[t * dim..(t + 1) * dim];
        let qp: [*const f32; Q] = std::array::from_fn(|t| q(t).as_ptr());
        let groups = n / R;
        for g in 0..groups {
            let first = g * R;
            let rp: [*const f32; R] = std::array::from_fn(|i| rows[(first + i) * dim..].as_ptr());
            let mut acc = [[_mm256_setzero_ps(); R]; Q];
            let mut c = 0;
            while c + LANES <= dim {
                // SAFETY: see the assert above; `c + LANES <= dim`.
                let rv: [__m256; R] = std::array::from_fn(|i| unsafe { load(rp[i].add(c)) });
                for t in 0..Q {
                    // SAFETY: as above.
                    let qv = unsafe { load(qp[t].add(c)) };
                    for i in 0..R {
                        acc[t][i] = step::<L2>(qv, rv[i], acc[t][i]);
                    }
                }
                c += LANES;
            }
            for (t, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    let row = &rows[(first + i) * dim..(first + i + 1) * dim];
                    out[t * n + first + i] = finish::<true, L2>(&lanes(*acc), q(t), row);
                }
            }
        }
        for r in groups * R..n {
            let row = &rows[r * dim..(r + 1) * dim];
            let mut acc = [_mm256_setzero_ps(); Q];
            let mut c = 0;
            while c + LANES <= dim {
                // SAFETY: as above.
                let rv = unsafe { load(row.as_ptr().add(c)) };
                for t in 0..Q {
                    // SAFETY: as above.
                    acc[t] = step::<L2>(unsafe { load(qp[t].add(c)) }, rv, acc[t]);
                }
                c += LANES;
            }
            for (t, acc) in acc.iter().enumerate() {
                out[t * n + r] = finish::<true, L2>(&lanes(*acc), q(t), row);
            }
        }
    }
}

#[inline(always)]
fn score_rows_with<const FMA: bool>(kernel: Kernel, q: &[f32], rows: &[f32], out: &mut [f32]) {
    match kernel {
        Kernel::Dot => score_rows_by::<FMA, false>(q, rows, out),
        Kernel::NegL2Squared => score_rows_by::<FMA, true>(q, rows, out),
    }
}

/// Scores four rows at a time: each row's eight lanes are one dependency chain, and four
/// independent chains keep the multiply-add units busy instead of waiting on each other. Every
/// row is computed in the same order whatever its group, so a score never depends on where a
/// row sits.
#[inline(always)]
fn score_rows_by<const FMA: bool, const L2: bool>(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = q.len();
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    let groups = out.len() / 4;
    let (grouped, rest) = out.split_at_mut(groups * 4);
    for (o, r) in grouped.chunks_exact_mut(4).zip(rows.chunks_exact(4 * dim)) {
        let (r0, r) = r.split_at(dim);
        let (r1, r) = r.split_at(dim);
        let (r2, r3) = r.split_at(dim);
        let mut acc = [[0.0_f32; LANES]; 4];
        let lanes = q
            .chunks_exact(LANES)
            .zip(r0.chunks_exact(LANES))
            .zip(r1.chunks_exact(LANES))
            .zip(r2.chunks_exact(LANES))
            .zip(r3.chunks_exact(LANES));
        for ((((qc, c0), c1), c2), c3) in lanes {
            for l in 0..LANES {
                acc[0][l] = term::<FMA, L2>(qc[l], c0[l], acc[0][l]);
                acc[1][l] = term::<FMA, L2>(qc[l], c1[l], acc[1][l]);
                acc[2][l] = term::<FMA, L2>(qc[l], c2[l], acc[2][l]);
                acc[3][l] = term::<FMA, L2>(qc[l], c3[l], acc[3][l]);
            }
        }
        for (i, (o, row)) in o.iter_mut().zip([r0, r1, r2, r3]).enumerate() {
            *o = finish::<FMA, L2>(&acc[i], q, row);
        }
    }
    for (o, row) in rest
        .iter_mut()
        .zip(rows[groups * 4 * dim..].chunks_exact(dim))
    {
        let mut acc = [0.0_f32; LANES];
        for (qc, rc) in q.chunks_exact(LANES).zip(row.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] = term::<FMA, L2>(qc[l], rc[l], acc[l]);
            }
        }
        *o = finish::<FMA, L2>(&acc, q, row);
    }
}

/// One step of a row's sum: `acc + q * r`, or `acc + (q - r)²` for L2.
#[inline(always)]
fn term<const FMA: bool, const L2: bool>(q: f32, r: f32, acc: f32) -> f32 {
    if L2 {
        let d = q - r;
        madd::<FMA>(d, d, acc)
    } else {
        madd::<FMA>(q, r, acc)
    }
}

/// Adds up a row's lanes and the elements past the last full lane group; L2 is negated, so
/// that higher is better for both kernels.
#[inline(always)]
fn finish<const FMA: bool, const L2: bool>(acc: &[f32; LANES], q: &[f32], row: &[f32]) -> f32 {
    let full = q.len() / LANES * LANES;
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in q[full..].iter().zip(&row[full..]) {
        sum = term::<FMA, L2>(*x, *y, sum);
    }
    if L2 {
        -sum
    } else {
        sum
    }
}

/// `s + x * y`, fused where the caller is compiled with FMA (`mul_add` without hardware FMA is
/// a slow library call, so the portable build never uses it).
#[inline(always)]
fn madd<const FMA: bool>(x: f32, y: f32, s: f32) -> f32 {
    if FMA {
        x.mul_add(y, s)
    } else {
        s + x * y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    fn naive_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum()
    }

    #[test]
    fn score_rows_matches_the_naive_sums() {
        // Lengths around the lane width exercise the remainder paths; 0..=9 rows exercise the
        // groups of four and the rows after them.
        for dim in [0, 1, 7, 8, 9, 15, 16, 17, 64, 100] {
            for n in 0..=9 {
                let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
                let rows: Vec<f32> = (0..dim * n).map(|i| (i as f32 * 1.3).cos()).collect();
                let mut out = vec![f32::NAN; n];
                for fma in [false, true] {
                    // The portable build, and the fused one (`mul_add` is exact in software too).
                    let run = |kernel, out: &mut [f32]| {
                        if fma {
                            score_rows_with::<true>(kernel, &q, &rows, out);
                        } else {
                            score_rows_with::<false>(kernel, &q, &rows, out);
                        }
                    };
                    run(Kernel::Dot, &mut out);
                    for (i, got) in out.iter().enumerate() {
                        let want = naive_dot(&q, &rows[i * dim..(i + 1) * dim]);
                        assert!(
                            (f64::from(*got) - want).abs() < 1e-4,
                            "dim {dim} n {n} row {i}"
                        );
                    }
                    run(Kernel::NegL2Squared, &mut out);
                    for (i, got) in out.iter().enumerate() {
                        let want = naive_l2(&q, &rows[i * dim..(i + 1) * dim]);
                        assert!(
                            (f64::from(*got) + want).abs() < 1e-4,
                            "dim {dim} n {n} row {i}"
                        );
                    }
                }
                // The build chosen for this CPU (the AVX2 intrinsics on most x86-64).
                for kernel in [Kernel::Dot, Kernel::NegL2Squared] {
                    let mut dispatched = vec![f32::NAN; n];
                    score_rows(kernel, &q, &rows, &mut dispatched);
                    let mut portable = vec![0.0; n];
                    score_rows_with::<false>(kernel, &q, &rows, &mut portable);
                    for (a, b) in dispatched.iter().zip(&portable) {
                        assert!(
                            (a - b).abs() < 1e-4,
                            "{kernel:?} dim {dim} n {n}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn many_queries_score_like_one_query_at_a_time() {
        // 0..=7 queries make every mix of tiles of 3, 2 and 1; 0..=9 rows every mix of groups of
        // four and rows after them.
        for dim in [1, 7, 8, 9, 16, 17, 100] {
            for n in 0..=9 {
                for nq in 0..=7 {
                    let queries: Vec<f32> =
                        (0..dim * nq).map(|i| (i as f32 * 0.37).sin()).collect();
                    let rows: Vec<f32> = (0..dim * n).map(|i| (i as f32 * 1.3).cos()).collect();
                    for kernel in [Kernel::Dot, Kernel::NegL2Squared] {
                        let mut many = vec![f32::NAN; nq * n];
                        score_rows_many(kernel, &queries, dim, &rows, &mut many);
                        for (j, q) in queries.chunks_exact(dim).enumerate() {
                            let mut one = vec![f32::NAN; n];
                            score_rows(kernel, q, &rows, &mut one);
                            for (i, (a, b)) in many[j * n..(j + 1) * n].iter().zip(&one).enumerate()
                            {
                                assert_eq!(
                                    a.to_bits(),
                                    b.to_bits(),
                                    "{kernel:?} dim {dim} n {n} nq {nq} query {j} row {i}"
                                );
                                let row = &rows[i * dim..(i + 1) * dim];
                                let want = match kernel {
                                    Kernel::Dot => naive_dot(q, row),
                                    Kernel::NegL2Squared => -naive_l2(q, row),
                                };
                                assert!((f64::from(*a) - want).abs() < 1e-4, "{a} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}
