"""The metrics text: families, labels and values rendered from model statistics; --metrics-config parsing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from conch.metrics import Metrics, MetricsOptions, SystemSampler
from conch.models import ModelState
from conch.stats import LatencySamples, ModelStats


def _manager(stats: ModelStats, pending: int = 0) -> Any:
    version = SimpleNamespace(
        name="m", label="1", state=ModelState.READY, stats=stats, load_seconds=0.25,
        scheduler=SimpleNamespace(pending=pending), config=SimpleNamespace(max_batch_size=8),
    )
    gone = SimpleNamespace(name="gone", label="1", state=ModelState.UNAVAILABLE)
    return SimpleNamespace(entries={"m": SimpleNamespace(versions={1: version}),
                                    "gone": SimpleNamespace(versions={1: gone})})


def _render(stats: ModelStats, options: MetricsOptions | None = None, pending: int = 0) -> str:
    metrics = Metrics(_manager(stats, pending), options or MetricsOptions(cpu=False, gpu=False))
    return metrics.render().decode()


def test_counters_from_statistics() -> None:
    stats = ModelStats()
    stats.record_execution(5, 2, 1000, 30_000, 2000)
    stats.record_request(True, 50_000, 4000)
    stats.record_request(True, 70_000, 6000)
    stats.record_request(False, 9000, 0)
    stats.record_failure("REJECTED", 1000)
    text = _render(stats, pending=3)
    labels = 'model="m",version="1"'
    assert f"nv_inference_request_success{{{labels}}} 2\n" in text
    assert 'nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 1\n' in text
    assert 'nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 1\n' in text
    assert 'nv_inference_request_failure{model="m",reason="CANCELED",version="1"} 0\n' in text
    assert f"nv_inference_count{{{labels}}} 5\n" in text
    assert f"nv_inference_exec_count{{{labels}}} 1\n" in text
    assert f"nv_inference_request_duration_us{{{labels}}} 120\n" in text
    assert f"nv_inference_queue_duration_us{{{labels}}} 10\n" in text
    assert f"nv_inference_compute_infer_duration_us{{{labels}}} 60\n" in text  # 30 us for each of 2 requests
    assert f"nv_inference_pending_request_count{{{labels}}} 3\n" in text
    assert f"nv_model_load_duration_secs{{{labels}}} 0.25\n" in text
    assert 'conch_inference_batch_size_bucket{le="4",model="m",version="1"} 0\n' in text
    assert 'conch_inference_batch_size_bucket{le="8",model="m",version="1"} 1\n' in text
    assert 'model="gone"' not in text  # only loaded versions have series


def test_counter_latencies_off_and_summaries_on() -> None:
    stats = ModelStats()
    stats.samples = LatencySamples()
    for us in range(1, 101):
        stats.record_request(True, us * 1000, 0)
    options = MetricsOptions(cpu=False, gpu=False)
    options.apply("counter_latencies=false")
    options.apply("summary_latencies=true")
    text = _render(stats, options)
    assert "nv_inference_request_duration_us" not in text
    assert 'nv_inference_request_summary_us_count{model="m",version="1"} 100\n' in text
    assert 'nv_inference_request_summary_us{model="m",quantile="0.5",version="1"} 51\n' in text
    assert 'nv_inference_request_summary_us{model="m",quantile="0.99",version="1"} 100\n' in text
    ModelStats.keep_samples = False  # Metrics() turned it on for the process


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("histogram_latencies", "expected <key>=<value>"),
        ("summary_latencies=maybe", "expected true or false"),
        ("colour=blue", "unknown key 'colour'"),
        ("summary_quantiles=a:b", "expected <quantile>:<error>"),
    ],
)
def test_bad_metrics_config(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricsOptions().apply(setting)


def test_quantiles_setting() -> None:
    options = MetricsOptions()
    options.apply("summary_quantiles=0.5:0.05,0.9:0.01")
    assert options.summary_quantiles == (0.5, 0.9)


def test_cpu_sampler_reads_proc() -> None:
    sampler = SystemSampler(cpu=True, gpu=False)
    sampler.sample()
    sampler.sample()
    assert 0.0 <= sampler.cpu["utilization"] <= 1.0
    assert sampler.cpu["memory_total"] >= sampler.cpu["memory_used"] > 0
    assert sampler.gpus == []
