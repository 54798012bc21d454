//! Median, min and max of repeated measurements, and how figures are shown.

use super::json::Json;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }

    /// `{median_ns, min_ns, max_ns, repeats, samples_ns}`.
    pub fn json_ns(&self, samples: &[f64]) -> Json {
        Json::obj()
            .with("median_ns", round1(self.median))
            .with("min_ns", round1(self.min))
            .with("max_ns", round1(self.max))
            .with("repeats", self.n)
            .with(
                "samples_ns",
                samples.iter().map(|v| round1(*v)).collect::<Vec<_>>(),
            )
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A duration in ns with a unit that keeps 3–4 significant digits: `812 ns`, `52.3 µs`,
/// `612 ms`.
pub fn duration_ns(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 10_000_000_000.0 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn units() {
        assert_eq!(duration_ns(812.4), "812 ns");
        assert_eq!(duration_ns(52_300.0), "52.3 µs");
        assert_eq!(duration_ns(612_000_000.0), "612.0 ms");
    }
}
