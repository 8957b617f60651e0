//! The real OpenTelemetry SDK with in-memory exporters, as the otel tests
//! read it: metrics summarised by name, and the crate docs' instrument
//! table. Each test file uses a part of it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// The crate docs, whose table lists every instrument.
pub(crate) const CRATE_DOCS: &str = include_str!("../../../tower-reuse-otel/src/lib.rs");

/// SDK providers exporting to memory; nothing global.
pub(crate) struct Telemetry {
    pub(crate) spans: InMemorySpanExporter,
    pub(crate) tracer_provider: SdkTracerProvider,
    pub(crate) metrics: InMemoryMetricExporter,
    pub(crate) meter_provider: SdkMeterProvider,
}

/// One exported metric, summarised.
#[derive(Debug)]
pub(crate) struct Metric {
    pub(crate) unit: String,
    pub(crate) kind: &'static str,
    /// Each data point's attributes and value (a sum, or a histogram's count).
    pub(crate) points: Points,
    /// A histogram's points with the sum of their values (none for
    /// another kind).
    pub(crate) sums: Points,
}

impl Metric {
    pub(crate) fn keys(&self) -> BTreeSet<String> {
        self.points
            .iter()
            .flat_map(|(attributes, _)| attributes.keys().cloned())
            .collect()
    }

    /// The sum of the values of points carrying every `(key, value)` of `with`.
    pub(crate) fn total(&self, with: &[(&str, &str)]) -> f64 {
        self.points
            .iter()
            .filter(|(attributes, _)| {
                with.iter()
                    .all(|(k, v)| attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

impl Telemetry {
    pub(crate) fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Telemetry {
            spans,
            tracer_provider,
            metrics,
            meter_provider,
        }
    }

    /// The bucket boundaries of histogram `name`'s first point.
    pub(crate) fn histogram_bounds(&self, name: &str) -> Vec<f64> {
        self.meter_provider.force_flush().unwrap();
        let exported = self.metrics.get_finished_metrics().unwrap();
        let last = exported.last().expect("an export");
        for scope in last.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() {
                    let point = histogram.data_points().next().expect("a point");
                    return point.bounds().collect();
                }
            }
        }
        panic!("no histogram {name}")
    }

    pub(crate) fn finished_spans(&self) -> Vec<SpanData> {
        self.tracer_provider.force_flush().unwrap();
        self.spans.get_finished_spans().unwrap()
    }

    /// Every metric by name, as of now (cumulative: the last export holds
    /// everything).
    pub(crate) fn metrics(&self) -> BTreeMap<String, Metric> {
        self.meter_provider.force_flush().unwrap();
        let exported = self.metrics.get_finished_metrics().unwrap();
        let last = exported.last().expect("an export");
        let mut out = BTreeMap::new();
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let (kind, points, sums) = summarise(metric.data());
                out.insert(
                    metric.name().to_owned(),
                    Metric {
                        unit: metric.unit().to_owned(),
                        kind,
                        points,
                        sums,
                    },
                );
            }
        }
        out
    }
}

/// Panics if an attribute of any point holds `secret` in its value, or is
/// a partition.
pub(crate) fn assert_no_attribute_holds(metrics: &BTreeMap<String, Metric>, secret: &str) {
    for (name, metric) in metrics {
        for (attributes, _) in &metric.points {
            for (key, value) in attributes {
                assert!(
                    !value.contains(secret) && !key.contains("partition"),
                    "{name} recorded {key}={value:?}"
                );
            }
        }
    }
}

pub(crate) fn attribute_map<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
) -> BTreeMap<String, String> {
    attributes
        .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
        .collect()
}

pub(crate) type Points = Vec<(BTreeMap<String, String>, f64)>;

/// A metric's kind, its points (a histogram's counted), and a histogram's
/// points summed.
fn summarise(data: &AggregatedMetrics) -> (&'static str, Points, Points) {
    match data {
        AggregatedMetrics::F64(data) => summarise_data(data, |v| v),
        AggregatedMetrics::U64(data) => summarise_data(data, |v| v as f64),
        AggregatedMetrics::I64(data) => summarise_data(data, |v| v as f64),
    }
}

fn summarise_data<T: Copy + std::fmt::Debug>(
    data: &MetricData<T>,
    to_f64: fn(T) -> f64,
) -> (&'static str, Points, Points) {
    match data {
        MetricData::Sum(sum) => (
            if sum.is_monotonic() {
                "Counter"
            } else {
                "UpDownCounter"
            },
            sum.data_points()
                .map(|p| (attribute_map(p.attributes()), to_f64(p.value())))
                .collect(),
            Points::new(),
        ),
        MetricData::Gauge(gauge) => (
            "Gauge",
            gauge
                .data_points()
                .map(|p| (attribute_map(p.attributes()), to_f64(p.value())))
                .collect(),
            Points::new(),
        ),
        MetricData::Histogram(histogram) => (
            "Histogram",
            histogram
                .data_points()
                .map(|p| (attribute_map(p.attributes()), p.count() as f64))
                .collect(),
            histogram
                .data_points()
                .map(|p| (attribute_map(p.attributes()), to_f64(p.sum())))
                .collect(),
        ),
        other => panic!("unexpected aggregation {other:?}"),
    }
}

/// One row of the crate docs' instrument table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) unit: String,
    pub(crate) attributes: BTreeSet<String>,
    /// Its last cell: what records it, and how.
    pub(crate) recorded_by: String,
}

impl Row {
    /// Whether the affinity layer's hook records it (feature `affinity`).
    pub(crate) fn is_affinity(&self) -> bool {
        self.recorded_by.starts_with("`OtelAffinityEvents`")
    }

    /// Whether the adaptive controller's hook records it (feature
    /// `adaptive`).
    pub(crate) fn is_adaptive(&self) -> bool {
        self.recorded_by.starts_with("`OtelAdaptiveEvents`")
    }
}

/// Backticked words in `text` (values have no dot; attribute names do).
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn docs_table() -> Vec<Row> {
    // The first table of the crate docs (the features' table comes later).
    let rows: Vec<Row> = CRATE_DOCS
        .lines()
        .skip_while(|line| !line.starts_with("//! |"))
        .take_while(|line| line.starts_with("//! |"))
        .filter_map(|line| line.strip_prefix("//! | `"))
        .map(|line| {
            let line = format!("`{line}");
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Row {
                name: backticked(cells[0]).remove(0),
                kind: cells[1].to_owned(),
                unit: backticked(cells[2]).remove(0),
                attributes: backticked(cells[3])
                    .into_iter()
                    .filter(|a| a.contains('.'))
                    .collect(),
                recorded_by: cells[4].to_owned(),
            }
        })
        .collect();
    assert!(rows.len() >= 10, "the docs table has {} rows", rows.len());
    rows
}
