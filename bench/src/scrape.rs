//! Reading counters before and after a load run: sessiongate's Prometheus `/metrics` (whoami
//! calls, cache lookups, shedding) and a fake Kratos' or counting proxy's `/__stats`.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

/// Sum of every sample of `name` (any labels) in a Prometheus text exposition.
pub fn prom_sum(text: &str, name: &str, label_filter: Option<&str>) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(f) = label_filter
            && !rest.contains(f)
        {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
        }
    }
    sum
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GateCounters {
    pub whoami: f64,
    pub hit: f64,
    pub miss: f64,
    pub coalesced: f64,
    pub negative: f64,
    pub shed: f64,
    pub entries: f64,
    pub weighted_bytes: f64,
}

pub async fn scrape(http: &reqwest::Client, url: &str) -> Result<(GateCounters, String)> {
    let text = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let c = GateCounters {
        whoami: prom_sum(&text, "sessiongate_whoami_requests_total", None),
        hit: prom_sum(
            &text,
            "sessiongate_cache_lookups_total",
            Some("result=\"hit\""),
        ),
        miss: prom_sum(
            &text,
            "sessiongate_cache_lookups_total",
            Some("result=\"miss\""),
        ),
        coalesced: prom_sum(
            &text,
            "sessiongate_cache_lookups_total",
            Some("result=\"coalesced\""),
        ),
        negative: prom_sum(
            &text,
            "sessiongate_cache_lookups_total",
            Some("result=\"negative\""),
        ),
        shed: prom_sum(&text, "sessiongate_whoami_shed_total", None),
        entries: prom_sum(&text, "sessiongate_cache_entries", None),
        weighted_bytes: prom_sum(&text, "sessiongate_cache_weighted_bytes", None),
    };
    Ok((c, text))
}

pub async fn upstream_stats(http: &reqwest::Client, url: &str) -> Result<Value> {
    let body = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::prom_sum;

    #[test]
    fn prom_sum_adds_the_samples_of_one_name() {
        let text = "# TYPE sessiongate_cache_lookups_total counter\n\
            sessiongate_cache_lookups_total{result=\"hit\"} 3\n\
            sessiongate_cache_lookups_total{result=\"miss\"} 2\n\
            sessiongate_cache_lookups_total_created 9\n\
            sessiongate_whoami_in_flight 4\n";
        let name = "sessiongate_cache_lookups_total";
        assert_eq!(prom_sum(text, name, None), 5.0);
        assert_eq!(prom_sum(text, name, Some("result=\"hit\"")), 3.0);
        assert_eq!(prom_sum(text, "sessiongate_whoami_in_flight", None), 4.0);
    }
}
