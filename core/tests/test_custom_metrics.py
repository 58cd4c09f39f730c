"""The custom metric registry: Triton's rules for families and series, owners, and how they are rendered."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest

from conch.custom_metrics import CustomMetrics, MetricKind, update_error
from conch.errors import ConchError, ErrorCode
from conch.metrics import BUILTIN_FAMILIES, Metrics, MetricsOptions


def _render(registry: CustomMetrics) -> str:
    models: Any = SimpleNamespace(entries={})
    return Metrics(models, MetricsOptions(cpu=False, gpu=False), registry).render().decode()


def test_counter_gauge_and_histogram_render_with_help_and_type() -> None:
    registry = CustomMetrics()
    counter = registry.family("requests_total", "Requests\nseen", MetricKind.COUNTER, owner="a").metric({"m": "x"})
    counter.increment(2)
    counter.increment(0.5)
    gauge = registry.family("depth", "Queue depth", "gauge", owner="a").metric()
    gauge.increment(-3)
    gauge.set(7)
    gauge.increment(-2)
    histogram = registry.family("sizes", "Sizes", MetricKind.HISTOGRAM, owner="a").metric({"m": "x"}, [1, 10])
    for value in (0.5, 1, 5, 50):
        histogram.observe(value)
    assert (counter.value(), gauge.value()) == (2.5, 5.0)
    text = _render(registry)
    assert "# HELP requests_total Requests\\nseen\n# TYPE requests_total counter\nrequests_total{m=\"x\"} 2.5\n" in text
    assert "# HELP depth Queue depth\n# TYPE depth gauge\ndepth 5\n" in text
    assert (  # Triton's order: count, sum, then the cumulative buckets, +Inf last
        '# HELP sizes Sizes\n# TYPE sizes histogram\nsizes_count{m="x"} 4\nsizes_sum{m="x"} 56.5\n'
        'sizes_bucket{le="1",m="x"} 2\nsizes_bucket{le="10",m="x"} 3\nsizes_bucket{le="+Inf",m="x"} 4\n'
    ) in text


def test_same_name_and_kind_share_the_family_and_same_labels_share_the_series() -> None:
    registry = CustomMetrics()
    first = registry.family("shared", "first text", MetricKind.COUNTER, owner="a")
    second = registry.family("shared", "second text", MetricKind.COUNTER, owner="b")
    first.metric({"k": "v"}).increment(1)
    second.metric({"k": "v"}).increment(2)
    assert first.metric({"k": "v"}).value() == 3
    text = _render(registry)
    assert "# HELP shared first text\n" in text and 'shared{k="v"} 3\n' in text and "second text" not in text
    histogram = registry.family("h", "h", MetricKind.HISTOGRAM).metric({}, [1])
    again = registry.family("h", "h", MetricKind.HISTOGRAM).metric({}, [5, 6])  # keeps the first buckets
    again.observe(2)
    assert 'h_bucket{le="1"} 0\n' in _render(registry) and histogram.name == "'h'"


def test_triton_errors() -> None:
    registry = CustomMetrics(reserved=BUILTIN_FAMILIES)
    counter = registry.family("c", "c", MetricKind.COUNTER).metric({"a": "1"})
    with pytest.raises(ConchError, match="TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically "
                                         r"by non-negative values\. \(metric 'c\{a=\"1\"\}', value -1\)"):  # fmt: skip
        counter.increment(-1)
    with pytest.raises(ConchError, match="TRITONSERVER_METRIC_KIND_COUNTER does not support Set"):
        counter.set(1)
    with pytest.raises(ConchError, match="TRITONSERVER_METRIC_KIND_COUNTER does not support Observe"):
        counter.observe(1)
    histogram = registry.family("h", "h", MetricKind.HISTOGRAM).metric({}, [])
    with pytest.raises(ConchError, match="TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value"):
        histogram.value()
    with pytest.raises(ConchError, match="Family name already exists with different type: metric family 'c' is a "
                                         "counter, not a gauge") as info:  # fmt: skip
        registry.family("c", "c", MetricKind.GAUGE)
    assert info.value.code is ErrorCode.INVALID_ARG
    with pytest.raises(ConchError, match="'nv_inference_count' is one of the server's own metric families"):
        registry.family("nv_inference_count", "x", MetricKind.COUNTER)
    for name in ("", "1abc", "bad name", "bad-name"):
        with pytest.raises(ConchError, match="Invalid metric name"):
            registry.family(name, "x", MetricKind.GAUGE)
    with pytest.raises(ConchError, match="Unsupported kind"):
        registry.family("x", "x", "summary")
    family = registry.family("g", "g", MetricKind.GAUGE)
    for labels in ({"bad-name": "x"}, {"__reserved": "x"}, {"1a": "x"}):
        with pytest.raises(ConchError, match="Invalid label name"):
            family.metric(labels)
    with pytest.raises(ConchError, match="Invalid label value for 'a'.*expected a string, got int"):
        family.metric({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ConchError, match="Unexpected buckets found: metric family 'g' is a gauge"):
        family.metric({}, [1.0])
    histograms = registry.family("h", "h", MetricKind.HISTOGRAM)
    with pytest.raises(ConchError, match="Missing required buckets: metric family 'h' is a histogram"):
        histograms.metric({})
    with pytest.raises(ConchError, match=r"Bucket Boundaries must be strictly sorted .*\[1\.0, 1\.0\]"):
        histograms.metric({}, [1, 1])
    assert update_error(MetricKind.GAUGE, "increment", -5, "'g'") is None


def test_series_and_families_go_with_their_last_handle() -> None:
    registry = CustomMetrics()
    one = registry.family("f", "f", MetricKind.GAUGE, owner="one")
    two = registry.family("f", "f", MetricKind.GAUGE, owner="two")
    a, b = one.metric({"s": "1"}), two.metric({"s": "1"})
    a.set(4)
    a.release()
    assert 'f{s="1"} 4\n' in _render(registry)  # b still holds the series
    with pytest.raises(ConchError, match="has been released"):
        a.set(1)
    b.release()
    assert "# HELP f" not in _render(registry)  # no series: the family is not shown
    one.metric({"s": "2"}).set(1)
    registry.release_owner("one")
    assert "# HELP f" not in _render(registry)
    fresh = two.metric({"s": "2"})
    assert fresh.value() == 0  # the series was dropped with its last handle: it starts again
    registry.release_owner("two")
    with pytest.raises(ConchError, match="Invalid metric operation as the corresponding 'MetricFamily' has been deleted"):
        fresh.set(1)
    # The name is free again once every handle is gone, even for another kind.
    assert registry.family("f", "f", MetricKind.COUNTER).kind is MetricKind.COUNTER


def test_release_later_is_applied_before_the_next_scrape() -> None:
    registry = CustomMetrics()
    family = registry.family("later", "l", MetricKind.COUNTER, owner="x")
    metric = family.metric({})
    metric.increment(1)
    registry.release_later(metric)
    registry.release_later(family)
    del metric, family
    gc.collect()
    assert "later" not in _render(registry)
    assert registry.family("later", "l", MetricKind.GAUGE).kind is MetricKind.GAUGE


def test_builtin_names_cover_what_the_endpoint_shows() -> None:
    models: Any = SimpleNamespace(entries={})
    text = Metrics(models, MetricsOptions(gpu=False)).render().decode()
    shown = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert shown <= set(BUILTIN_FAMILIES)
