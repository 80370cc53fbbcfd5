//! Status reports as they arrive over the wire: the generated gRPC types
//! decoded into checked `pool::Report`s. Pure: the caller passes the
//! current time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::ident;
use crate::grpc::v1;
use crate::pool::Metrics;
use crate::pool::report::{MAX_BATCH, MAX_METRICS, MAX_SKEW, Report, ReportError};

/// Checks a batch; the first problem refuses all of it.
pub fn decode(batch: &v1::ReportBatch, now_unix_ms: i64) -> Result<Vec<Report>, ReportError> {
    if batch.reports.len() > MAX_BATCH {
        return Err(ReportError::TooMany(batch.reports.len()));
    }
    ident::check_label(&batch.source).map_err(ReportError::BadSource)?;
    let source: std::sync::Arc<str> = batch.source.as_str().into();
    batch
        .reports
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |what, error| ReportError::BadId { index, what, error };
            ident::check_name(&r.pool).map_err(|e| bad("pool", e))?;
            ident::check_id(&r.member).map_err(|e| bad("member", e))?;
            ident::check_label(&r.check).map_err(|e| bad("check", e))?;
            if r.metrics.len() > MAX_METRICS {
                return Err(ReportError::TooManyMetrics { index, count: r.metrics.len() });
            }
            let mut metrics = Metrics::default();
            let mut custom = BTreeMap::new();
            for (name, &value) in &r.metrics {
                ident::check_metric(name).map_err(|error| ReportError::BadName { index, error })?;
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
                .map(|a| {
                    a.parse()
                        .ok()
                        .filter(|&ip| ident::check_address(ip).is_ok())
                        .ok_or_else(|| ReportError::BadAddress { index, value: ident::shown(a) })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let observed = if r.observed_unix_ms == 0 { now_unix_ms } else { r.observed_unix_ms };
            // Saturating: any i64 may arrive, and must not wrap.
            let ahead = observed.saturating_sub(now_unix_ms);
            if ahead > MAX_SKEW.as_millis() as i64 {
                return Err(ReportError::Future { index, ahead_ms: ahead });
            }
            Ok(Report {
                pool: r.pool.clone(),
                member: r.member.clone(),
                up: r.up,
                metrics,
                custom,
                age: Duration::from_millis(ahead.saturating_neg().max(0) as u64),
                check: r.check.clone(),
                addresses,
                source: source.clone(),
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
        assert_eq!(decode(&unnamed, 0).unwrap_err(), ReportError::BadId { index: 0, what: "member", error: ident::IdentError::Empty });
    }

    #[test]
    fn hostile_names_are_refused_short() {
        for (field, value) in [
            ("member", "web1\nevil 60 IN TXT \"x\"".to_owned()),
            ("member", "x".repeat(10_000)),
            ("pool", "www example.".to_owned()),
            ("check", format!("tcp{}", "\u{7}")),
            ("address", "0.0.0.0".to_owned()),
        ] {
            let mut r = report(&[], 0);
            match field {
                "member" => r.reports[0].member = value.clone(),
                "pool" => r.reports[0].pool = value.clone(),
                "check" => r.reports[0].check = value.clone(),
                _ => r.reports[0].addresses = vec![value.clone()],
            }
            let e = decode(&r, 0).unwrap_err();
            assert_eq!(e.reason(), "malformed", "{field}: {e}");
            assert!(e.to_string().len() < 160 && !e.to_string().contains('\n'), "{field}: {e}");
        }
    }

    #[test]
    fn any_observation_time_is_taken_without_overflow() {
        let e = decode(&report(&[], i64::MAX), i64::MIN + 1).unwrap_err();
        assert!(matches!(e, ReportError::Future { ahead_ms: i64::MAX, .. }), "{e}");
        let r = decode(&report(&[], i64::MIN), 10_000).unwrap();
        assert!(r[0].age > Duration::from_secs(86_400 * 365 * 1000), "very old: {:?}", r[0].age);
    }
}
