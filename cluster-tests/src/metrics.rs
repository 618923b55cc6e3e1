//! Reading samples out of a Prometheus text exposition (`GET /metrics`).

/// The value of the sample of `name` whose labels include every `(label, value)` of `labels`
/// (the first such sample).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name).find(|(l, _)| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))).map(|(_, v)| v)
}

/// The sum of every sample of `name`, whatever its labels (0 when there is none).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, v)| v).sum()
}

/// `(labels text, value)` of each sample line of `name`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            (&r[..end], r[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            return None;
        };
        let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((labels, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_name_and_labels() {
        let text = "# TYPE x counter\nx_total{peer=\"2\"} 5\nx_total{peer=\"3\"} 7\nx_total_other 1\ny 2.5\n";
        assert_eq!(metric(text, "x_total", &[("peer", "3")]), Some(7.0));
        assert_eq!(metric_sum(text, "x_total"), 12.0);
        assert_eq!(metric(text, "y", &[]), Some(2.5));
        assert_eq!(metric(text, "z", &[]), None);
    }
}
