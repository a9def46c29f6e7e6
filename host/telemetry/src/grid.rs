//! Counts on a baseline's quantile grid: what a window carries for a
//! numeric feature that has a baseline, instead of a quantile sketch.
//!
//! The grid is the baseline's 101 quantiles `q[0..=100]`; value `v` falls
//! in bin `i`, the first with `v <= q[i]` (bin 101: above `q[100]`). Counts
//! merge exactly (add them), drift needs nothing else (the baseline's CDF
//! is only known on the grid anyway), and they are small: a window of 50
//! features ships about a tenth of what KLL sketches took. On the wire they
//! are base64 of unsigned LEB128 varints: the number of bins, the
//! non-finite count, then each bin's count.

use crate::sketch::Sketch;
use base64::Engine as _;

/// Largest grid accepted from the wire (a baseline has 101 quantiles).
const MAX_BINS: u64 = 4096;

/// Observations per bin of a quantile grid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GridCounts {
    counts: Vec<u64>,
    non_finite: u64,
}

impl GridCounts {
    /// Empty counts for a grid of `grid_len` points (`grid_len + 1` bins).
    pub fn new(grid_len: usize) -> Self {
        GridCounts {
            counts: vec![0; grid_len + 1],
            non_finite: 0,
        }
    }

    /// Count `v` on `grid` (the baseline's quantiles, non-decreasing).
    pub fn add(&mut self, grid: &[f64], v: f32) {
        if !v.is_finite() {
            self.non_finite += 1;
            return;
        }
        let i = grid.partition_point(|&q| q < f64::from(v));
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
    }

    /// Approximate counts from a sketch (a window from a device that ships
    /// sketches): the sketch's CDF at each grid point times its count.
    pub fn from_sketch(grid: &[f64], sketch: &Sketch) -> Self {
        let mut out = GridCounts::new(grid.len());
        out.non_finite = sketch.non_finite();
        let n = sketch.count();
        let Some(cdf) = sketch.cdf(grid) else {
            return out;
        };
        let mut below = 0u64;
        for (i, c) in cdf.iter().enumerate() {
            let upto = ((c.clamp(0.0, 1.0) * n as f64).round() as u64).clamp(below, n);
            out.counts[i] = upto - below;
            below = upto;
        }
        out.counts[grid.len()] = n - below;
        out
    }

    /// Add `other`'s counts (same grid).
    pub fn merge(&mut self, other: &GridCounts) -> Result<(), String> {
        if other.counts.len() != self.counts.len() {
            return Err(format!(
                "grid of {} bins cannot merge one of {}",
                self.counts.len(),
                other.counts.len()
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.non_finite = self.non_finite.saturating_add(other.non_finite);
        Ok(())
    }

    /// Finite observations (saturating; [`GridCounts::from_base64`] refuses
    /// counts whose sum overflows).
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Non-finite observations (not in any bin).
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// Counts per bin.
    pub fn bins(&self) -> &[u64] {
        &self.counts
    }

    /// Fraction of the observations at or below grid point `j`.
    pub fn cdf_at_point(&self, j: usize) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        self.counts[..=j.min(self.counts.len() - 1)]
            .iter()
            .sum::<u64>() as f64
            / total as f64
    }

    /// The wire form: base64 of LEB128 varints (bins, non-finite, counts).
    pub fn to_base64(&self) -> String {
        let mut out = Vec::with_capacity(self.counts.len() + 4);
        let mut put = |mut v: u64| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        put(self.counts.len() as u64);
        put(self.non_finite);
        for &c in &self.counts {
            put(c);
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
    }

    /// Parse [`GridCounts::to_base64`]'s output.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|e| format!("grid counts: {e}"))?;
        let mut it = bytes.iter();
        let mut get = || -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *it.next().ok_or("grid counts: truncated")?;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("grid counts: varint too long".into())
        };
        let bins = get()?;
        if bins == 0 || bins > MAX_BINS {
            return Err(format!("grid counts: {bins} bins (1 to {MAX_BINS})"));
        }
        let non_finite = get()?;
        let counts = (0..bins).map(|_| get()).collect::<Result<Vec<_>, _>>()?;
        if it.next().is_some() {
            return Err("grid counts: trailing bytes".into());
        }
        counts
            .iter()
            .try_fold(non_finite, |a, &c| a.checked_add(c))
            .ok_or("grid counts: the counts add up to more than 2^64")?;
        Ok(GridCounts { counts, non_finite })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_in_the_first_bin_at_or_above_them() {
        let grid = [0.0, 1.0, 1.0, 2.0];
        let mut g = GridCounts::new(grid.len());
        for v in [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, f32::NAN] {
            g.add(&grid, v);
        }
        // (-inf,0] (0,1] (1,1] (1,2] (2,inf)
        assert_eq!(g.bins(), &[2, 2, 0, 2, 1]);
        assert_eq!((g.count(), g.non_finite()), (7, 1));
        assert_eq!(g.cdf_at_point(1), 4.0 / 7.0);
    }

    #[test]
    fn wire_form_round_trips_and_rejects_damage() {
        let mut g = GridCounts::new(100);
        let grid: Vec<f64> = (0..100).map(f64::from).collect();
        for i in 0..5000 {
            g.add(&grid, (i % 150) as f32);
        }
        let s = g.to_base64();
        assert_eq!(GridCounts::from_base64(&s).unwrap(), g);
        assert!(GridCounts::from_base64(&s[..s.len() - 4]).is_err());
        assert!(GridCounts::from_base64("AA").is_err(), "zero bins");
        assert!(GridCounts::from_base64("not base64!").is_err());
        // Two bins of 2^64 - 1: a sum that would wrap.
        let mut huge = vec![2u8, 0];
        for _ in 0..2 {
            huge.extend([0xff; 9]);
            huge.push(0x01);
        }
        let huge = base64::engine::general_purpose::STANDARD_NO_PAD.encode(huge);
        assert_eq!(
            GridCounts::from_base64(&huge).unwrap_err(),
            "grid counts: the counts add up to more than 2^64"
        );
        let mut other = GridCounts::new(10);
        assert!(other.merge(&g).is_err());
        other = g.clone();
        other.merge(&g).unwrap();
        assert_eq!(other.count(), 2 * g.count());
    }

    #[test]
    fn sketch_conversion_keeps_the_count_and_the_shape() {
        let grid: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).collect();
        let mut s = Sketch::new(200);
        let mut exact = GridCounts::new(grid.len());
        for i in 0..10_000 {
            let v = (i as f32 / 10_000.0).powi(2);
            s.update(v);
            exact.add(&grid, v);
        }
        let approx = GridCounts::from_sketch(&grid, &s);
        assert_eq!(approx.count(), exact.count());
        for j in 0..grid.len() {
            assert!(
                (approx.cdf_at_point(j) - exact.cdf_at_point(j)).abs() < 0.02,
                "point {j}"
            );
        }
    }
}
