"""check.py: every problem of a repository, each located as path:line:column."""

from __future__ import annotations

from pathlib import Path

from conch.backend import Backend
from conch.check import Problem, check_repositories, format_problems
from conch.hookimpl import hookimpl
from conch.plugins import Plugins


class FakePython(Backend):
    name = "python"
    default_model_filename = "model.py"


def make_plugins() -> Plugins:
    class _Plugin:
        @hookimpl
        def conch_register_backends(self) -> list[Backend]:
            return [FakePython()]

    plugins = Plugins()
    plugins.load(autoload=False)
    plugins.pm.register(_Plugin(), name="test-backends")
    return plugins


GOOD = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
"""


def write_model(root: Path, name: str, config: str, versions: tuple[str, ...] = ("1",)) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / version).mkdir()
        (model_dir / version / "model.py").write_text("")
    return model_dir


def test_clean_repository_has_no_problems(tmp_path: Path) -> None:
    write_model(tmp_path, "good", GOOD.format(name="good"))
    problems = check_repositories([tmp_path], make_plugins())
    assert problems == []
    assert format_problems(problems) == "no problems found"


def test_every_problem_is_collected(tmp_path: Path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    write_model(repo, "good", GOOD.format(name="good"), versions=("1", "abc"))
    write_model(repo, "broken", 'name: "broken"\nbackend: "python"\nmax_batch_size: ${MBS}\n')
    bad = (
        GOOD.format(name="bad")
        .replace("max_batch_size: 8", "max_batch_size: -1")
        .replace("[ 4 ] } ]\noutput", "[ 0 ] } ]\noutput")
    )
    write_model(repo, "bad", bad)
    write_model(repo, "pinned", GOOD.format(name="pinned") + "version_policy { specific { versions: [ 1, 2 ] } }\n")
    write_model(repo, "noversion", GOOD.format(name="noversion"), versions=())
    write_model(repo, "twice", GOOD.format(name="twice"))
    write_model(other, "twice", GOOD.format(name="twice"))
    missing = tmp_path / "missing"

    problems = check_repositories([repo, other, missing], make_plugins())
    located = {
        (
            Path(p.path).relative_to(tmp_path).as_posix() if p.path.startswith(str(tmp_path)) else p.path,
            p.line,
            p.column,
            p.field,
            p.severity,
        )
        for p in problems
    }
    assert located == {
        ("missing", None, None, None, "error"),
        ("repo/bad/config.pbtxt", 3, 1, "max_batch_size", "error"),
        ("repo/bad/config.pbtxt", 4, 47, "input[0].dims", "error"),
        ("repo/broken/config.pbtxt", 3, 17, "max_batch_size", "error"),
        ("repo/good/abc", None, None, None, "warning"),
        ("repo/noversion/config.pbtxt", None, None, "version_policy", "error"),
        ("repo/pinned/config.pbtxt", 6, 1, "version_policy", "warning"),
        ("repo/twice", None, None, None, "error"),
        ("other/twice", None, None, None, "error"),
    }
    by_field = {p.field: p for p in problems if p.path.endswith("bad/config.pbtxt")}
    assert str(by_field["max_batch_size"]) == (
        f"{repo}/bad/config.pbtxt:3:1: field 'max_batch_size': 'max_batch_size' must be non-negative value for bad"
    )
    broken = next(p for p in problems if "broken" in p.path)
    assert "Expected integer, got: $" in broken.message and "unfilled template" in broken.message
    noversion = next(p for p in problems if "noversion" in p.path)
    assert noversion.message == "at least one version must be available under the version policy of model 'noversion'"
    twice = next(p for p in problems if p.path == str(repo / "twice"))
    assert "model appears in two or more repositories" in twice.message and str(other / "twice") in twice.message
    assert any(str(missing) in p.message for p in problems if p.path == str(missing))

    text = format_problems(problems)
    assert text.splitlines()[-1] == "7 errors, 2 warnings"
    assert f"{repo}/good/abc: warning: ignore version directory 'abc' which fails to convert to integral number" in text


def test_problem_format() -> None:
    assert str(Problem("/r/m/config.pbtxt", 3, 17, "max_batch_size", "boom")) == "/r/m/config.pbtxt:3:17: boom"
    assert str(Problem("/r/m", None, None, None, "boom", "warning")) == "/r/m: warning: boom"
    assert format_problems([Problem("p", 1, None, None, "x")]) == "p:1: x\n1 error, 0 warnings"


def _ensemble(name: str, model: str, datatype: str = "TYPE_FP32", extra_step: str = "") -> str:
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f'input [ {{ name: "IN" data_type: {datatype} dims: [ 4 ] }} ]\n'
        f'output [ {{ name: "OUT" data_type: {datatype} dims: [ 4 ] }} ]\n'
        f'ensemble_scheduling {{ step [ {{ model_name: "{model}" model_version: -1 '
        'input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "OUT" } }'
        f"{extra_step} ] }}\n"
    )


def test_ensembles_are_checked_against_their_composing_models(tmp_path: Path) -> None:
    write_model(tmp_path, "good", GOOD.format(name="good"))
    write_model(tmp_path, "fine", _ensemble("fine", "good"))
    write_model(tmp_path, "no_model", _ensemble("no_model", "nope"))
    write_model(tmp_path, "wrong_type", _ensemble("wrong_type", "good", datatype="TYPE_INT32"))
    write_model(tmp_path, "ring_a", _ensemble("ring_a", "ring_b"))
    write_model(tmp_path, "ring_b", _ensemble("ring_b", "ring_a"))
    problems = {Path(p.path).parent.name: p for p in check_repositories([tmp_path], make_plugins())}
    assert "fine" not in problems and "good" not in problems
    assert problems["no_model"].message == "ensemble no_model contains models that are not available or ambiguous: nope"
    assert problems["no_model"].line == 6  # the ensemble_scheduling line of its config.pbtxt
    assert problems["wrong_type"].message == (
        "in ensemble wrong_type, ensemble tensor IN: inconsistent data type: TYPE_INT32 is inferred from model "
        "wrong_type while TYPE_FP32 is inferred from model good"
    )
    assert problems["ring_a"].message == "circular dependency between ensembles: ring_a -> ... -> ring_b -> ring_a"
    assert problems["ring_b"].message == "circular dependency between ensembles: ring_b -> ... -> ring_a -> ring_b"
