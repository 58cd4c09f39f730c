"""Prometheus metrics on ``--metrics-port`` (``GET /metrics``), with Triton's family names and HELP texts.

Per-model series are read from each loaded model version's statistics when scraped, so they exist at
0 as soon as a version loads and disappear when it unloads, and nothing is done per request. CPU
figures come from ``/proc``; GPU figures from NVML (``nvidia-ml-py``) where it and a GPU are present.
Conch adds ``conch_inference_batch_size``, a per-model histogram of executed batch sizes. Families that
backends register at run time (:mod:`conch.custom_metrics`) follow the server's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conch.custom_metrics import CustomMetrics, MetricKind
from conch.stats import FAILURE_REASONS, LatencySamples, ModelStats

if TYPE_CHECKING:
    from conch.models import ModelManager, ModelVersion

log = logging.getLogger("conch.metrics")

CONTENT_TYPE = "text/plain; charset=utf-8"
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)

_DURATIONS = (  # (family, HELP, statistic)
    ("nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)", "success"),
    ("nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)", "queue"),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)", "compute_input"),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)", "compute_infer"),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)",
     "compute_output"),
)
_SUMMARIES = (  # (family, HELP, LatencySamples kind)
    ("nv_inference_request_summary_us",
     "Summary of inference request duration in microseconds (includes cached requests)", "request"),
    ("nv_inference_queue_summary_us",
     "Summary of inference queuing duration in microseconds (includes cached requests)", "queue"),
    ("nv_inference_compute_input_summary_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)", "compute_input"),
    ("nv_inference_compute_infer_summary_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)", "compute_infer"),
    ("nv_inference_compute_output_summary_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)",
     "compute_output"),
)
_GPU = (  # (family, HELP, type, sample key)
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge", "utilization"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge", "memory_total"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge", "memory_used"),
    ("nv_gpu_power_usage", "GPU power usage in watts", "gauge", "power_usage"),
    ("nv_gpu_power_limit", "GPU power management limit in watts", "gauge", "power_limit"),
    ("nv_energy_consumption", "GPU energy consumption in joules since the Triton Server started", "counter",
     "energy"),
)


#: Every family the server itself may show; custom families cannot take these names.
BUILTIN_FAMILIES = (
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_pending_request_count", "nv_model_load_duration_secs", "conch_inference_batch_size",
    "nv_inference_first_response_histogram_ms", "nv_cpu_utilization", "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes", *(row[0] for row in _DURATIONS), *(row[0] for row in _SUMMARIES),
    *(row[0] for row in _GPU),
)  # fmt: skip

#: Bucket bounds (ms) of ``nv_inference_first_response_histogram_ms`` with ``histogram_latencies=true``.
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)


@dataclass
class MetricsOptions:
    """``--allow-metrics`` and friends, ``--metrics-config`` parsed."""

    enabled: bool = True
    gpu: bool = True
    cpu: bool = True
    address: str = ""  # "": the HTTP address
    port: int = 8002
    interval_ms: int = 2000
    counter_latencies: bool = True
    summary_latencies: bool = False
    histogram_latencies: bool = False
    summary_quantiles: tuple[float, ...] = QUANTILES
    unknown: list[str] = field(default_factory=list)

    def apply(self, setting: str) -> None:
        """One ``--metrics-config <key>=<value>``; raises ValueError naming what is wrong."""
        key, sep, value = setting.partition("=")
        if not sep:
            raise ValueError(f"--metrics-config '{setting}': expected <key>=<value>")
        if key in ("counter_latencies", "summary_latencies", "histogram_latencies"):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(f"--metrics-config '{setting}': expected true or false")
            setattr(self, key, lowered in ("true", "1"))
        elif key == "summary_quantiles":
            try:
                self.summary_quantiles = tuple(float(part.split(":")[0]) for part in value.split(","))
            except ValueError:
                raise ValueError(f"--metrics-config '{setting}': expected <quantile>:<error>,...") from None
        else:
            raise ValueError(f"--metrics-config '{setting}': unknown key '{key}'")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs))
    return "{" + inner + "}" if inner else ""


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Text:
    """Prometheus text exposition, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, kind: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode() if self.lines else b""


def _duration_us(attribute: str) -> Callable[[ModelStats], int]:
    def value(stats: ModelStats) -> int:
        return int(getattr(stats, attribute).ns // 1000)

    return value


def _quantile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(int(q * len(sorted_values)), len(sorted_values) - 1)
    return sorted_values[index] // 1000


class SystemSampler:
    """CPU (``/proc``) and GPU (NVML) figures, refreshed every ``--metrics-interval-ms``."""

    def __init__(self, cpu: bool, gpu: bool) -> None:
        self.cpu_enabled = cpu
        self.cpu: dict[str, float] = {}
        self.gpus: list[dict[str, Any]] = []
        self._last_cpu: tuple[int, int] | None = None
        self._nvml: Any = None
        self._energy_start: dict[str, float] = {}
        if gpu:
            self._nvml = _start_nvml()

    def sample(self) -> None:
        if self.cpu_enabled:
            self._sample_cpu()
        if self._nvml is not None:
            self._sample_gpus()

    def _sample_cpu(self) -> None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
            with open("/proc/meminfo") as meminfo:
                mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo if ":" in line}
        except (OSError, ValueError, IndexError):
            return
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        if self._last_cpu is not None:
            d_total, d_idle = total - self._last_cpu[0], idle - self._last_cpu[1]
            self.cpu["utilization"] = (d_total - d_idle) / d_total if d_total > 0 else 0.0
        else:
            self.cpu.setdefault("utilization", 0.0)
        self._last_cpu = (total, idle)
        if "MemTotal" in mem and "MemAvailable" in mem:
            self.cpu["memory_total"] = mem["MemTotal"]
            self.cpu["memory_used"] = mem["MemTotal"] - mem["MemAvailable"]

    def _sample_gpus(self) -> None:
        nvml = self._nvml
        gpus: list[dict[str, Any]] = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                row: dict[str, Any] = {
                    "uuid": uuid,
                    "utilization": nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                    "memory_total": int(memory.total),
                    "memory_used": int(memory.used),
                }
                for key, call, scale in (
                    ("power_usage", "nvmlDeviceGetPowerUsage", 1000.0),
                    ("power_limit", "nvmlDeviceGetPowerManagementLimit", 1000.0),
                    ("energy", "nvmlDeviceGetTotalEnergyConsumption", 1000.0),
                ):
                    try:
                        row[key] = getattr(nvml, call)(handle) / scale
                    except Exception:  # noqa: BLE001 - not every GPU reports every figure
                        continue
                if "energy" in row:
                    start = self._energy_start.setdefault(uuid, row["energy"])
                    row["energy"] = row["energy"] - start
                gpus.append(row)
        except Exception as exc:  # noqa: BLE001 - GPU figures are best effort
            log.warning("failed to read GPU metrics: %s", exc)
        self.gpus = gpus


def _start_nvml() -> Any:
    """The ``pynvml`` module once NVML initialised with at least one GPU; None otherwise (no error)."""
    try:
        import pynvml
    except ImportError:
        log.debug("nvidia-ml-py is not installed: no GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception as exc:  # noqa: BLE001 - no driver, no GPU
        log.debug("NVML unavailable (%s): no GPU metrics", exc)
        return None
    log.info("Collecting GPU metrics")
    return pynvml


class Metrics:
    """Renders every family; the server serves :meth:`render` on the metrics port."""

    def __init__(self, models: ModelManager, options: MetricsOptions, custom: CustomMetrics | None = None) -> None:
        self.models = models
        self.options = options
        self.custom = custom
        self.system = SystemSampler(options.cpu, options.gpu)
        if options.cpu:
            log.info("Collecting CPU metrics")
        self._task: asyncio.Task[None] | None = None
        if options.summary_latencies:
            ModelStats.keep_samples = True
        if options.histogram_latencies:
            ModelStats.first_response_buckets_ms = FIRST_RESPONSE_BUCKETS_MS

    def start(self) -> None:
        self.system.sample()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        interval = max(self.options.interval_ms, 1) / 1000.0
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.system.sample)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _versions(self) -> list[ModelVersion]:
        from conch.models import ModelState

        live = (ModelState.READY, ModelState.UNLOADING)
        return [mv for entry in self.models.entries.values() for mv in entry.versions.values() if mv.state in live]

    def render(self) -> bytes:
        out = _Text()
        versions = self._versions()
        rows = [(mv, (("model", mv.name), ("version", mv.label))) for mv in versions]
        self._counter(out, rows, "nv_inference_request_success",
                      "Number of successful inference requests, all batch sizes", lambda s: s.success.count)
        out.family("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "counter")
        for mv, labels in rows:
            for reason in FAILURE_REASONS:
                out.sample("nv_inference_request_failure", (*labels, ("reason", reason)), mv.stats.failures[reason])
        self._counter(out, rows, "nv_inference_count",
                      "Number of inferences performed (does not include cached requests)",
                      lambda s: s.inference_count)
        self._counter(out, rows, "nv_inference_exec_count",
                      "Number of model executions performed (does not include cached requests)",
                      lambda s: s.execution_count)
        if self.options.counter_latencies:
            for name, help_text, attribute in _DURATIONS:
                self._counter(out, rows, name, help_text, _duration_us(attribute))
        out.family("nv_inference_pending_request_count",
                   "Instantaneous number of pending requests awaiting execution per-model.", "gauge")
        for mv, labels in rows:
            out.sample("nv_inference_pending_request_count", labels, mv.scheduler.pending if mv.scheduler else 0)
        out.family("nv_model_load_duration_secs", "Model load time in seconds", "gauge")
        for mv, labels in rows:
            out.sample("nv_model_load_duration_secs", labels, float(mv.load_seconds))
        self._batch_sizes(out, rows)
        if self.options.summary_latencies:
            self._summaries(out, rows)
        if self.options.histogram_latencies:
            self._first_response(out, rows)
        self._system(out)
        if self.custom is not None:
            _custom(out, self.custom)
        return out.render()

    @staticmethod
    def _counter(
        out: _Text, rows: list[tuple[ModelVersion, Any]], name: str, help_text: str, value: Callable[[ModelStats], int]
    ) -> None:
        out.family(name, help_text, "counter")
        for mv, labels in rows:
            out.sample(name, labels, value(mv.stats))

    @staticmethod
    def _batch_sizes(out: _Text, rows: list[tuple[ModelVersion, Any]]) -> None:
        name = "conch_inference_batch_size"
        out.family(name, "Batch sizes of model executions (Conch; dynamic batcher efficiency)", "histogram")
        for mv, labels in rows:
            counts = {size: b.compute_infer.count for size, b in mv.stats.batches.items()}
            largest = max(int(mv.config.max_batch_size), 1, *counts) if counts else max(int(mv.config.max_batch_size), 1)
            bounds: list[int] = []
            bound = 1
            while bound < largest:
                bounds.append(bound)
                bound *= 2
            bounds.append(largest)
            for le in bounds:
                out.sample(f"{name}_bucket", (*labels, ("le", str(le))), sum(c for s, c in counts.items() if s <= le))
            out.sample(f"{name}_bucket", (*labels, ("le", "+Inf")), sum(counts.values()))
            out.sample(f"{name}_count", labels, sum(counts.values()))
            out.sample(f"{name}_sum", labels, sum(s * c for s, c in counts.items()))

    @staticmethod
    def _first_response(out: _Text, rows: list[tuple[ModelVersion, Any]]) -> None:
        name = "nv_inference_first_response_histogram_ms"
        out.family(name, "Duration from request to first response in milliseconds", "histogram")
        for mv, labels in rows:
            histogram = mv.stats.first_response
            if histogram is None:
                continue
            for le, count in histogram.cumulative():
                out.sample(f"{name}_bucket", (*labels, ("le", le)), count)
            out.sample(f"{name}_sum", labels, histogram.sum)
            out.sample(f"{name}_count", labels, histogram.total)

    def _summaries(self, out: _Text, rows: list[tuple[ModelVersion, Any]]) -> None:
        for name, help_text, kind in _SUMMARIES:
            out.family(name, help_text, "summary")
            for mv, labels in rows:
                samples: LatencySamples | None = mv.stats.samples
                if samples is None:
                    continue
                total = samples.totals[kind]
                out.sample(f"{name}_count", labels, total.count)
                out.sample(f"{name}_sum", labels, total.ns // 1000)
                recent = sorted(samples.recent[kind])
                for q in self.options.summary_quantiles:
                    out.sample(name, (*labels, ("quantile", _number(q))), _quantile(recent, q))

    def _system(self, out: _Text) -> None:
        cpu = self.system.cpu
        if self.options.cpu and cpu:
            out.family("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "gauge")
            out.sample("nv_cpu_utilization", (), cpu.get("utilization", 0.0))
            if "memory_total" in cpu:
                out.family("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "gauge")
                out.sample("nv_cpu_memory_total_bytes", (), cpu["memory_total"])
                out.family("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "gauge")
                out.sample("nv_cpu_memory_used_bytes", (), cpu["memory_used"])
        if self.system.gpus:
            for name, help_text, kind, key in _GPU:
                out.family(name, help_text, kind)
                for gpu in self.system.gpus:
                    if key in gpu:
                        out.sample(name, (("gpu_uuid", gpu["uuid"]),), gpu[key])


def _custom(out: _Text, registry: CustomMetrics) -> None:
    """The families backends registered (:mod:`conch.custom_metrics`)."""
    for family in registry.collect():
        name = family.name
        out.family(name, family.description.replace("\\", "\\\\").replace("\n", "\\n"), family.kind.value)
        for series in family.series:
            if family.kind is not MetricKind.HISTOGRAM:
                out.sample(name, series.labels, series.value)
                continue
            out.sample(f"{name}_count", series.labels, series.count)  # Triton's order: count, sum, buckets
            out.sample(f"{name}_sum", series.labels, series.sum)
            for bound, count in series.buckets:
                out.sample(f"{name}_bucket", (*series.labels, ("le", _number(bound))), count)


def metrics_app(metrics: Metrics) -> Callable[..., Any]:
    """The metrics port's ASGI app: ``GET /metrics``; every other path answers 200 with no body, as Triton's."""

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        body = metrics.render() if scope.get("path") == "/metrics" else b""
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
