//! Rates from periodic samples of counters.

/// Rates of two counters, from the sampler's readings: the counts at the last sample and the
/// per-second rates then.
#[derive(Debug, Default)]
pub struct RatePair(parking_lot::Mutex<([u64; 2], [f64; 2])>);

impl RatePair {
    /// Record counts `now`, `secs` after the previous sample (None: the first).
    pub fn sample(&self, now: [u64; 2], secs: Option<f64>) {
        let mut s = self.0.lock();
        if let Some(secs) = secs {
            let before = s.0;
            s.1 = [0, 1].map(|k| now[k].saturating_sub(before[k]) as f64 / secs);
        }
        s.0 = now;
    }

    pub fn get(&self) -> [f64; 2] {
        self.0.lock().1
    }
}
