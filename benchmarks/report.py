"""Results on disk: every measurement and their medians as CSV, and the Markdown table."""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .baseline import Baseline
from .perf import Measurement
from .servers import NAMES

TARGET_OVERHEAD_US = 150


@dataclass
class Cell:
    """The median over repeats of one (server, model, protocol, concurrency)."""

    server: str
    model: str
    protocol: str
    concurrency: int
    throughput: float | None
    p50_us: float | None
    p99_us: float | None
    cpu_per_1k: float | None
    stable: bool
    repeats: int
    error: str


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(measurements: list[Measurement]) -> list[Cell]:
    groups: dict[tuple[str, str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.server, m.model, m.protocol, m.concurrency), []).append(m)
    cells = []
    for (server, model, protocol, concurrency), group in groups.items():
        ok = [m for m in group if m.throughput is not None]
        cells.append(Cell(
            server, model, protocol, concurrency,
            _median([m.throughput for m in ok]), _median([m.p50_us for m in ok]), _median([m.p99_us for m in ok]),
            _median([m.cpu_per_1k for m in ok]), all(m.stable for m in ok), len(ok),
            "" if ok else group[-1].error,
        ))  # fmt: skip
    return cells


def write_csv(path: Path, rows: list[object]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(rows[0])])  # type: ignore[arg-type]
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))  # type: ignore[call-overload]


def _num(value: float | None, scale: float = 1.0, digits: int = 0, mark: str = "") -> str:
    if value is None:
        return "—"
    return f"{value / scale:,.{digits}f}{mark}"


def markdown(cells: list[Cell], baselines: dict[str, Baseline], header: list[str]) -> str:
    """The whole results page: conditions, Conch against each peer, overhead at concurrency 1, every cell."""
    by_key = {(c.server, c.model, c.protocol, c.concurrency): c for c in cells}
    models = list(dict.fromkeys(c.model for c in cells))
    protocols = list(dict.fromkeys(c.protocol for c in cells))
    levels = sorted({c.concurrency for c in cells})
    peers = [s for s in ("triton", "mlserver") if any(c.server == s for c in cells)]
    out = [*header, ""]

    def throughput(server: str, model: str, protocol: str, level: int) -> float | None:
        cell = by_key.get((server, model, protocol, level))
        return cell.throughput if cell else None

    if peers:
        out += ["## Conch against each peer", "",
                "Conch's infer/s divided by the peer's, same model, protocol and concurrency (above 1: Conch is faster).", "",
                "| model | protocol | peer | " + " | ".join(f"c={lv}" for lv in levels) + " |",
                "|---|---|---|" + "---|" * len(levels)]  # fmt: skip
        for model in models:
            for protocol in protocols:
                for peer in peers:
                    ratios = []
                    for level in levels:
                        ours, theirs = (
                            throughput("conch", model, protocol, level),
                            throughput(peer, model, protocol, level),
                        )
                        ratios.append(f"{ours / theirs:.2f}×" if ours and theirs else "—")
                    if any(r != "—" for r in ratios):
                        out.append(f"| {model} | {protocol.upper()} | {NAMES[peer]} | " + " | ".join(ratios) + " |")
        out.append("")

    if baselines:
        out += ["## Serving overhead at concurrency 1", "",
                f"p50 latency through the server minus the raw call's median (target for Conch: under {TARGET_OVERHEAD_US} µs). "
                "It includes perf_analyzer's own client, which runs on the same cores."]  # fmt: skip
        floor = any(c.server == "floor" for c in cells)
        if floor:
            out += ["The floor is a server answering with canned bytes (`benchmarks/floor.py`), measured in the same "
                    "run: what perf_analyzer, loopback and wake-ups cost on this machine before any server works; "
                    "Conch above it is what Conch's request path and the model's call add."]  # fmt: skip
        out += ["", "| model | raw call | raw median µs | protocol | "
                + " | ".join(f"{NAMES[s]} p50 µs | {NAMES[s]} overhead µs" for s in ["conch", *peers])
                + (" | floor p50 µs | Conch above floor µs" if floor else "") + " |",
                "|---|---|---|---|" + "---|---|" * (1 + len(peers) + floor)]  # fmt: skip
        for model in models:
            base = baselines.get(model)
            if base is None:
                continue
            for protocol in protocols:
                row = [model, base.call, f"{base.median_us:.1f}", protocol.upper()]
                for server in ["conch", *peers]:
                    cell = by_key.get((server, model, protocol, 1))
                    if cell is None or cell.p50_us is None:
                        row += ["—", "—"]
                        continue
                    overhead = cell.p50_us - base.median_us
                    flag = " ✓" if server == "conch" and overhead < TARGET_OVERHEAD_US else ""
                    row += [f"{cell.p50_us:,.0f}", f"{overhead:,.0f}{flag}"]
                if floor:
                    ours, canned = by_key.get(("conch", model, protocol, 1)), by_key.get(("floor", model, protocol, 1))
                    if ours is None or canned is None or ours.p50_us is None or canned.p50_us is None:
                        row += ["—", "—"]
                    else:
                        row += [f"{canned.p50_us:,.0f}", f"{ours.p50_us - canned.p50_us:,.0f}"]
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        out += [
            "## Raw baselines",
            "",
            "| model | call | median µs | p99 µs | calls/s (one thread) |",
            "|---|---|---|---|---|",
        ]
        for base in baselines.values():
            out.append(
                f"| {base.model} | {base.call} | {base.median_us:.1f} | {base.p99_us:.1f} | {base.calls_per_s:,.0f} |"
            )
        out.append("")

    out += ["## Every measurement", "",
            "Medians over the repeats. `~`: perf_analyzer's stability window was not met in any repeat (a busy "
            "machine); the last three windows are shown. CPU: the server's process tree (user + system), per "
            "1,000 inferences. × raw: infer/s over the raw call's calls/s. Conch ÷: Conch's infer/s over this server's.", "",
            "| model | protocol | c | server | infer/s | p50 ms | p99 ms | CPU s / 1k inf | × raw | Conch ÷ |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in models:
        for protocol in protocols:
            for level in levels:
                for server in ["conch", *peers]:
                    cell = by_key.get((server, model, protocol, level))
                    if cell is None:
                        continue
                    if cell.throughput is None:
                        out.append(f"| {model} | {protocol.upper()} | {level} | {NAMES[server]} | failed: {cell.error} |"
                                   " | | | | |")  # fmt: skip
                        continue
                    mark = "" if cell.stable else "~"
                    base = baselines.get(model)
                    raw = f"{cell.throughput / base.calls_per_s:.3f}" if base else "—"
                    ours = throughput("conch", model, protocol, level)
                    versus = f"{ours / cell.throughput:.2f}×" if server != "conch" and ours else ""
                    out.append(
                        f"| {model} | {protocol.upper()} | {level} | {NAMES[server]} | {_num(cell.throughput, mark=mark)} | "
                        f"{_num(cell.p50_us, 1000, 2)} | {_num(cell.p99_us, 1000, 2)} | {_num(cell.cpu_per_1k, digits=3)} | "
                        f"{raw} | {versus} |"
                    )
    out.append("")
    return "\n".join(out)
