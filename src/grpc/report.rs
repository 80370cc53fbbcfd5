//! Status reports as they arrive over the wire: the generated gRPC types
//! decoded into checked `pool::Report`s. Pure: the caller passes the
//! current time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::grpc::v1;
use crate::pool::Metrics;
use crate::pool::report::{MAX_BATCH, MAX_METRICS, MAX_SKEW, Report, ReportError, valid_name};

/// Checks a batch; the first problem refuses all of it.
pub fn decode(batch: &v1::ReportBatch, now_unix_ms: i64) -> Result<Vec<Report>, ReportError> {
    if batch.reports.len() > MAX_BATCH {
        return Err(ReportError::TooMany(batch.reports.len()));
    }
    batch
        .reports
        .iter()
        .enumerate()
        .map(|(index, r)| {
            if r.pool.is_empty() || r.member.is_empty() {
                return Err(ReportError::Unnamed { index });
            }
            if r.metrics.len() > MAX_METRICS {
                return Err(ReportError::TooManyMetrics { index, count: r.metrics.len() });
            }
            let mut metrics = Metrics::default();
            let mut custom = BTreeMap::new();
            for (name, &value) in &r.metrics {
                if !valid_name(name) {
                    return Err(ReportError::BadName { index, name: name.clone() });
                }
                if !value.is_finite() || value < 0.0 {
                    return Err(ReportError::BadMetric { index, name: name.clone(), value });
                }
                match name.as_str() {
                    "load" => metrics.load = Some(value),
                    "connections" => metrics.connections = Some(value),
                    "pending" => metrics.pending = Some(value),
                    "response_ms" => metrics.response_ms = Some(value),
                    "throughput" => metrics.throughput = Some(value),
                    "hops" | "distance" => metrics.distance = Some(value),
                    _ => {
                        custom.insert(name.clone(), value);
                    }
                }
            }
            let addresses = r
                .addresses
                .iter()
                .map(|a| a.parse().map_err(|_| ReportError::BadAddress { index, value: a.clone() }))
                .collect::<Result<Vec<_>, _>>()?;
            let observed = if r.observed_unix_ms == 0 { now_unix_ms } else { r.observed_unix_ms };
            let ahead = observed - now_unix_ms;
            if ahead > MAX_SKEW.as_millis() as i64 {
                return Err(ReportError::Future { index, ahead_ms: ahead });
            }
            Ok(Report {
                pool: r.pool.clone(),
                member: r.member.clone(),
                up: r.up,
                metrics,
                custom,
                age: Duration::from_millis((-ahead).max(0) as u64),
                check: r.check.clone(),
                addresses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(metrics: &[(&str, f64)], observed: i64) -> v1::ReportBatch {
        v1::ReportBatch {
            source: "test".into(),
            reports: vec![v1::MemberReport {
                pool: "www.example.".into(),
                member: "web1".into(),
                up: true,
                metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                observed_unix_ms: observed,
                check: "tcp".into(),
                addresses: Vec::new(),
            }],
        }
    }

    #[test]
    fn well_known_and_custom_metrics() {
        let r = decode(&report(&[("load", 0.5), ("hops", 3.0), ("mailbox_size", 12.0)], 9_000), 10_000).unwrap();
        assert_eq!(r[0].metrics.load, Some(0.5));
        assert_eq!(r[0].metrics.distance, Some(3.0));
        assert_eq!(r[0].custom["mailbox_size"], 12.0);
        assert_eq!(r[0].age, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (m, reason) in [
            (("load", f64::NAN), "bad_metric"),
            (("load", f64::INFINITY), "bad_metric"),
            (("pending", -1.0), "bad_metric"),
            (("no spaces", 1.0), "malformed"),
        ] {
            let e = decode(&report(&[m], 0), 10_000).unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
        }
        let e = decode(&report(&[], 10_000 + 60_000), 10_000).unwrap_err();
        assert!(matches!(e, ReportError::Future { .. }), "{e}");
        let mut unnamed = report(&[], 0);
        unnamed.reports[0].member.clear();
        assert_eq!(decode(&unnamed, 0).unwrap_err(), ReportError::Unnamed { index: 0 });
    }
}
