//! Least squares with non-negative coefficients on a handful of features: the capacity model's
//! fitter (small dense systems, solved by Gaussian elimination).

use std::collections::BTreeMap;

/// Fitted coefficients by feature name (0 for a feature left out).
pub type Coefs = BTreeMap<&'static str, f64>;

/// Solves the square system `a x = b` with partial pivoting; `None` if (nearly) singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-9 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        let pivot = a[c].clone();
        let bc = b[c];
        for (r, (row, br)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * p;
                }
                *br -= f * bc;
            }
        }
    }
    Some((0..n).map(|i| b[i] / a[i][i]).collect())
}

/// Ordinary least squares on the columns `cols` of `x` (each scaled to unit maximum first, so
/// the singularity test does not depend on units); `None` if the columns are (nearly)
/// linearly dependent on these rows.
fn lstsq(x: &[Vec<f64>], y: &[f64], cols: &[usize]) -> Option<Vec<f64>> {
    let scale: Vec<f64> = cols
        .iter()
        .map(|&j| {
            let m = x.iter().map(|row| row[j].abs()).fold(0.0, f64::max);
            if m > 0.0 {
                m
            } else {
                1.0
            }
        })
        .collect();
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|row| cols.iter().zip(&scale).map(|(&j, s)| row[j] / s).collect())
        .collect();
    let k = cols.len();
    let a = (0..k)
        .map(|p| {
            (0..k)
                .map(|q| z.iter().map(|r| r[p] * r[q]).sum())
                .collect()
        })
        .collect();
    let b = (0..k)
        .map(|p| z.iter().zip(y).map(|(r, yy)| r[p] * yy).sum())
        .collect();
    let sol = solve(a, b)?;
    Some(sol.iter().zip(&scale).map(|(v, s)| v / s).collect())
}

/// Least squares with coefficients ≥ 0. Features enter in `priority` order, and only if the
/// rows can tell them apart from those already in (with a single task count, set-up and
/// per-task time are one number: the one earlier in `priority` is kept). Then, while a
/// coefficient is negative, the most negative feature is dropped and the rest refitted.
pub fn nnls(x: &[Vec<f64>], y: &[f64], names: &[&'static str], priority: &[&str]) -> Coefs {
    let mut coef: Coefs = names.iter().map(|n| (*n, 0.0)).collect();
    let mut active: Vec<usize> = Vec::new();
    for p in priority {
        let Some(j) = names.iter().position(|n| n == p) else {
            continue;
        };
        if !x.iter().any(|row| row[j] != 0.0) || active.len() + 1 > x.len() {
            continue;
        }
        let mut trial = active.clone();
        trial.push(j);
        if lstsq(x, y, &trial).is_some() {
            active = trial;
        }
    }
    while !active.is_empty() {
        let Some(sol) = lstsq(x, y, &active) else {
            active.pop();
            continue;
        };
        let worst = (0..sol.len()).min_by(|&i, &j| sol[i].total_cmp(&sol[j]));
        match worst {
            Some(w) if sol[w] < 0.0 => {
                active.remove(w);
            }
            _ => {
                for (&j, v) in active.iter().zip(sol) {
                    coef.insert(names[j], v);
                }
                return coef;
            }
        }
    }
    coef
}

/// [`nnls`] minimising residuals relative to `of` (row i divided by `of[i]`, the measured
/// figure), so a 100 s run does not outweigh twenty 3 s ones: the bench's noise is
/// proportional, and relative error is what the held-out check reports.
pub fn nnls_relative(
    x: &[Vec<f64>],
    y: &[f64],
    of: &[f64],
    names: &[&'static str],
    priority: &[&str],
) -> Coefs {
    let w: Vec<f64> = of
        .iter()
        .map(|v| if v.abs() > 1e-12 { 1.0 / v.abs() } else { 1.0 })
        .collect();
    let xw: Vec<Vec<f64>> = x
        .iter()
        .zip(&w)
        .map(|(row, w)| row.iter().map(|v| v * w).collect())
        .collect();
    let yw: Vec<f64> = y.iter().zip(&w).map(|(v, w)| v * w).collect();
    nnls(&xw, &yw, names, priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_exact_coefficients() {
        // y = 2 + 3 x1 + 0.5 x2
        let rows: Vec<Vec<f64>> = (0..8)
            .map(|i| vec![1.0, i as f64, ((i * 7) % 5) as f64])
            .collect();
        let y: Vec<f64> = rows.iter().map(|r| 2.0 + 3.0 * r[1] + 0.5 * r[2]).collect();
        let c = nnls(&rows, &y, &["k", "a", "b"], &["a", "b", "k"]);
        assert!((c["k"] - 2.0).abs() < 1e-9, "{c:?}");
        assert!((c["a"] - 3.0).abs() < 1e-9, "{c:?}");
        assert!((c["b"] - 0.5).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn drops_negative_and_indistinguishable_features() {
        // y = 4 - x: the slope would be negative, so only the constant stays.
        let rows: Vec<Vec<f64>> = (0..4).map(|i| vec![1.0, i as f64]).collect();
        let y: Vec<f64> = rows.iter().map(|r| 4.0 - r[1]).collect();
        let c = nnls(&rows, &y, &["k", "a"], &["a", "k"]);
        assert_eq!(c["a"], 0.0);
        assert!((c["k"] - 2.5).abs() < 1e-9, "{c:?}");
        // Two identical columns: the first in priority order takes it all.
        let rows: Vec<Vec<f64>> = (1..4).map(|i| vec![i as f64, i as f64]).collect();
        let y: Vec<f64> = rows.iter().map(|r| 2.0 * r[0]).collect();
        let c = nnls(&rows, &y, &["p", "q"], &["q", "p"]);
        assert_eq!(c["p"], 0.0);
        assert!((c["q"] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn empty_input_gives_zeros() {
        let c = nnls(&[], &[], &["a"], &["a"]);
        assert_eq!(c["a"], 0.0);
    }
}
