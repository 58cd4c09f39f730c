"""Profile Conch's request path under perf_analyzer with py-spy: where the server's CPU goes.

    .venv/bin/python -m benchmarks.profile [--model add_sub_python] [--protocol http] [--concurrency 1]
                                           [--seconds 15] [--out DIR]

Starts ``conch serve`` on the one model, drives it with perf_analyzer for ``--seconds``, and samples the
server and its workers with ``py-spy record --subprocesses`` meanwhile (py-spy comes with the suite's tools
environment). Writes the collapsed stacks (``profile.txt``, for speedscope or flamegraph.pl) and prints
the top functions by own time and by inclusive time, per process.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import time
from pathlib import Path

from . import install, models, servers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", default="add_sub_python", choices=list(models.MODELS))
    parser.add_argument("--protocol", default="http", choices=["http", "grpc"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--out", type=Path, default=install.ROOT / "results" / "profile")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    tool = install.perf_analyzer()
    pyspy = install.tools().parent / "py-spy"
    model = models.MODELS[ns.model]
    with tempfile.TemporaryDirectory(prefix="conch-profile-") as tmp:
        work = Path(tmp)
        graphs = {}
        if model.kind == "onnx":
            graphs[model.name] = work / "model.onnx"
            models.write_graph(model, graphs[model.name])
        repo = models.write_conch(work / "repo", [model], graphs)
        server = servers.start("conch", repo, ns.out / "conch.log")
        try:
            load = subprocess.Popen(
                [str(tool), "-m", model.name, "-i", ns.protocol, "-u", server.url(ns.protocol), "-b", "1",
                 "--concurrency-range", str(ns.concurrency), "--measurement-interval", str(ns.seconds * 1000 + 4000),
                 "--max-trials", "1", "--stability-percentage", "1000"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            time.sleep(2)  # warm up
            stacks = ns.out / "profile.txt"
            record = [str(pyspy), "record", "--pid", str(server.process.pid), "--subprocesses", "--format", "raw",
                      "--rate", "250", "--gil", "--duration", str(ns.seconds), "--output", str(stacks)]  # fmt: skip
            record.append("--native" if ns.native else "--nonblocking")  # native frames need the process paused
            done = subprocess.run(record, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"py-spy failed: {done.stderr.strip()[-800:]}")
            output, _ = load.communicate(timeout=120)
        finally:
            servers.stop(server)
    print("\n".join(output.strip().splitlines()[-12:]))
    summarise(stacks, ns.top)


def summarise(stacks: Path, top: int = 25) -> None:
    """Top functions by own and inclusive samples, per process (the first frame of py-spy's raw stacks)."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in stacks.read_text().splitlines():
        frames_text, _, count_text = line.rpartition(" ")
        frames = frames_text.split(";")
        # --subprocesses nests a child's stacks under its parent's "process <pid>:<command>" frame
        last = max(i for i, frame in enumerate(frames) if frame.startswith("process "))
        process, frames, count = frames[last][:100], frames[last + 1 :], int(count_text)
        totals[process] += count
        if frames:
            own[process][frames[-1]] += count
            for frame in set(frames):
                inclusive[process][frame] += count
    everything = sum(totals.values())
    for process, total in totals.most_common():
        print(f"\n== {process}: {total} samples ({100 * total / everything:.0f} % of all) ==")
        for title, table in (("own", own[process]), ("inclusive", inclusive[process])):
            print(f"-- by {title} time --")
            for frame, count in table.most_common(top):
                print(f"{100 * count / total:5.1f} %  {frame}")


if __name__ == "__main__":
    main()
