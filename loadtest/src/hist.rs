//! Latency histograms: HdrHistogram in nanoseconds, their text form in the
//! JSON report (V2 serializer + base64, the format HdrHistogram tools read)
//! and the percentile summary.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest value recorded, in nanoseconds (60 s); larger ones saturate.
pub const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    /// An empty histogram covering 1 ns to [`MAX_NS`].
    pub fn new() -> Self {
        // Bounds and precision are constants inside the crate's valid range.
        match Histogram::new_with_bounds(1, MAX_NS, 3) {
            Ok(h) => Self(h),
            Err(_) => unreachable!("constant histogram bounds are valid"),
        }
    }

    /// Records one value; values out of range saturate.
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds every count of `other`.
    pub fn add(&mut self, other: &Hist) {
        // Both cover the same range, so adding cannot fail; should a
        // deserialized one not fit, its values saturate one by one.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// `true` if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Empties the histogram.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The value at `quantile` (0..=1) in microseconds; `None` when empty.
    pub fn quantile_us(&self, quantile: f64) -> Option<f64> {
        (!self.is_empty()).then(|| self.0.value_at_quantile(quantile) as f64 / 1000.0)
    }

    /// The percentile summary; `None` when empty.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.is_empty() {
            return None;
        }
        let h = &self.0;
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }

    /// The V2 serialization, base64-encoded.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::new();
        // Serializing into a Vec cannot fail for a valid histogram; an empty
        // string reads back as an empty histogram.
        if V2Serializer::new().serialize(&self.0, &mut bytes).is_err() {
            return String::new();
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Reads [`Hist::to_base64`] output.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::new());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("histogram base64: {e}"))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("histogram V2: {e:?}"))?;
        let mut out = Self::new();
        out.add(&Hist(h));
        Ok(out)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Hist::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        for v in 1..=1000u64 {
            a.record(v * 1000); // 1 µs .. 1 ms
        }
        for _ in 0..1000 {
            b.record(10_000_000); // 10 ms
        }
        a.add(&b);
        assert_eq!(a.len(), 2000);
        let p = a.summary().unwrap();
        assert!((p.p50_us - 1000.0).abs() < 2.0, "{p:?}");
        assert!((p.p99_us - 10_000.0).abs() < 10.0, "{p:?}");
        assert!((p.max_us - 10_000.0).abs() < 10.0, "{p:?}");
    }

    #[test]
    fn base64_round_trip_then_merge() {
        let mut a = Hist::new();
        a.record(1);
        a.record(123_456);
        a.record(MAX_NS * 2); // saturates
        let text = a.to_base64();
        let back = Hist::from_base64(&text).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.0.max(), a.0.max());
        let mut merged = back.clone();
        merged.add(&Hist::from_base64(&text).unwrap());
        assert_eq!(merged.len(), 6);
        assert_eq!(merged.0.count_at(123_456), 2);
    }

    #[test]
    fn serde_form_is_a_string_and_empty_is_fine() {
        let h = Hist::new();
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with('"'));
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert!(back.is_empty());
        assert!(back.summary().is_none());
        let empty: Hist = serde_json::from_str("\"\"").unwrap();
        assert!(empty.is_empty());
        assert!(Hist::from_base64("not base64!").is_err());
    }
}
