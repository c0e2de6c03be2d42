//! The Prometheus text exposition format (version 0.0.4), written straight into a `String`.
//!
//! Written here rather than with the `prometheus` crate's encoder because that one cannot write
//! `untyped` families (RabbitMQ's `identity_info` and `build_info` are untyped) and prints a
//! bucket bound of 100 as `le="100"`, where rabbitmq_prometheus prints `le="100.0"` and its
//! Grafana dashboards select exactly that string (Prometheus 2 keeps `le` as written).

use std::fmt::Write;

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Untyped,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text-format document being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn with_capacity(n: usize) -> Self {
        Text {
            out: String::with_capacity(n),
        }
    }

    /// Start a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.name());
        self.out.push('\n');
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (k, (n, v)) in labels.iter().enumerate() {
                if k > 0 {
                    self.out.push(',');
                }
                self.out.push_str(n);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    /// A family of one sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], v: f64) {
        self.family(name, help, kind);
        self.sample(name, labels, v);
    }

    /// A histogram of one series: `counts` per bucket (not cumulative), the last one above
    /// every bound; `bounds` are the `le` labels of all but that last bucket.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[&str],
        counts: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(bounds.len() + 1, counts.len());
        self.family(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let le = with_le.len() - 1;
        let mut cumulative = 0u64;
        for (k, n) in counts.iter().enumerate() {
            cumulative += n;
            with_le[le].1 = bounds.get(k).copied().unwrap_or("+Inf");
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_samples_and_escapes() {
        let mut t = Text::default();
        t.single("a_total", "Help \\ with\nnewline", Kind::Counter, &[], 3.0);
        t.family("b", "B", Kind::Untyped);
        t.sample("b", &[("x", "q\"\\\n"), ("y", "2")], 0.5);
        t.sample("b", &[], f64::INFINITY);
        t.sample("b", &[], f64::NAN);
        t.sample("b", &[], 12345678901.0);
        assert_eq!(
            t.finish(),
            "# HELP a_total Help \\\\ with\\nnewline\n# TYPE a_total counter\na_total 3\n\
             # HELP b B\n# TYPE b untyped\nb{x=\"q\\\"\\\\\\n\",y=\"2\"} 0.5\nb +Inf\nb NaN\n\
             b 12345678901\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut t = Text::default();
        t.histogram("h", "H", &[("p", "x")], &["1.0", "10.0"], &[2, 0, 1], 25.0);
        assert_eq!(
            t.finish(),
            "# HELP h H\n# TYPE h histogram\nh_bucket{p=\"x\",le=\"1.0\"} 2\n\
             h_bucket{p=\"x\",le=\"10.0\"} 2\nh_bucket{p=\"x\",le=\"+Inf\"} 3\n\
             h_sum{p=\"x\"} 25\nh_count{p=\"x\"} 3\n"
        );
    }
}
