//! A mergeable quantile sketch (Apache DataSketches' KLL over `f32`).

use base64::Engine as _;
use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};

/// Default accuracy parameter: about 1.65% normalized rank error.
pub const DEFAULT_K: u16 = 200;

/// A KLL quantile sketch over `f32` values. Non-finite values are counted
/// apart ([`Sketch::non_finite`]) instead of poisoning the distribution.
#[derive(Clone)]
pub struct Sketch {
    kll: KllSketch<KllFloat<f32>>,
    non_finite: u64,
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("n", &self.kll.n())
            .field("retained", &self.kll.num_retained())
            .finish()
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new(DEFAULT_K)
    }
}

impl Sketch {
    /// A sketch with accuracy parameter `k` (clamped to 8..=65535).
    pub fn new(k: u16) -> Self {
        let kll = KllSketch::new(k.max(8)).unwrap_or_default();
        Sketch { kll, non_finite: 0 }
    }

    /// Add one value. NaN and infinities are counted in [`Sketch::non_finite`].
    pub fn update(&mut self, v: f32) {
        match KllFloat::<f32>::new(v) {
            Ok(x) if v.is_finite() => self.kll.update(x),
            _ => self.non_finite += 1,
        }
    }

    /// Finite values seen.
    pub fn count(&self) -> u64 {
        self.kll.n()
    }

    /// Non-finite values seen.
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// Merge another sketch into this one.
    pub fn merge(&mut self, other: &Sketch) {
        // Both sketches hold f32 items; merge only fails on mismatched item types.
        let _ = self.kll.merge(&other.kll);
        self.non_finite += other.non_finite;
    }

    /// The value at normalized rank `rank` (0..=1); `None` when empty.
    pub fn quantile(&self, rank: f64) -> Option<f64> {
        self.kll
            .quantile(rank.clamp(0.0, 1.0), SearchCriteria::Inclusive)
            .ok()
            .flatten()
            .map(|v| f64::from(v.into_inner()))
    }

    /// Values at `ranks` (each 0..=1); `None` when empty.
    pub fn quantiles(&self, ranks: &[f64]) -> Option<Vec<f64>> {
        if self.kll.is_empty() {
            return None;
        }
        let view = self.kll.sorted_view();
        ranks
            .iter()
            .map(|&r| {
                let r = r.clamp(0.0, 1.0);
                if r == 0.0 {
                    return self.kll.min_item().map(|v| f64::from(v.into_inner()));
                }
                if r == 1.0 {
                    return self.kll.max_item().map(|v| f64::from(v.into_inner()));
                }
                view.quantile(r, SearchCriteria::Inclusive)
                    .ok()
                    .flatten()
                    .map(|v| f64::from(v.into_inner()))
            })
            .collect()
    }

    /// Fraction of values `<= x`; `None` when empty.
    pub fn cdf_at(&self, x: f64) -> Option<f64> {
        let x = KllFloat::<f32>::new(x as f32).ok()?;
        self.kll.rank(&x, SearchCriteria::Inclusive)
    }

    /// Fractions of values `<= x` for each (sorted, any duplicates allowed) `xs`.
    pub fn cdf(&self, xs: &[f64]) -> Option<Vec<f64>> {
        if self.kll.is_empty() {
            return None;
        }
        let view = self.kll.sorted_view();
        Some(
            xs.iter()
                .map(|&x| {
                    KllFloat::<f32>::new(x as f32)
                        .ok()
                        .and_then(|x| view.rank(&x, SearchCriteria::Inclusive))
                        .unwrap_or(0.0)
                })
                .collect(),
        )
    }

    /// Serialized form: the DataSketches KLL image, preceded by the
    /// non-finite count (8 bytes, little endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.non_finite.to_le_bytes().to_vec();
        out.extend(self.kll.serialize());
        out
    }

    /// Parse [`Sketch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 8 {
            return Err("sketch is shorter than its 8-byte header".into());
        }
        let (head, image) = bytes.split_at(8);
        let non_finite = u64::from_le_bytes(head.try_into().map_err(|_| "bad header")?);
        let kll = KllSketch::deserialize(image).map_err(|e| format!("bad KLL sketch: {e}"))?;
        Ok(Sketch { kll, non_finite })
    }

    /// [`Sketch::to_bytes`] as standard base64 (the JSON wire form).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// Parse [`Sketch::to_base64`].
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("sketch is not base64: {e}"))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges() {
        let mut a = Sketch::new(64);
        let mut b = Sketch::new(64);
        for i in 0..1000 {
            a.update(i as f32);
            b.update((1000 + i) as f32);
        }
        a.update(f32::NAN);
        let a2 = Sketch::from_base64(&a.to_base64()).unwrap();
        assert_eq!(a2.count(), 1000);
        assert_eq!(a2.non_finite(), 1);
        let mut m = a2.clone();
        m.merge(&b);
        assert_eq!(m.count(), 2000);
        let median = m.quantile(0.5).unwrap();
        assert!((900.0..1100.0).contains(&median), "{median}");
        assert_eq!(m.quantile(0.0), Some(0.0));
        assert_eq!(m.quantile(1.0), Some(1999.0));
    }

    #[test]
    fn rejects_truncated_sketch() {
        let mut a = Sketch::new(64);
        a.update(1.0);
        let bytes = a.to_bytes();
        assert!(Sketch::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(Sketch::from_bytes(&bytes[..4]).is_err());
    }
}
