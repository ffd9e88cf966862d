"""The package's shape (issue 21): the folder tree is the architecture, imports only point down,
only the entry points read the config, and run folders saved before the move still load. Across
the repository (explore, bench, analysis, launch, hydra_plugins): no import cycle, no private
name imported from another module; bench and analysis import down their own pipelines."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny import rows

from explore import evaluate as ev
from explore.train import train

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "explore"
# the layers, top to bottom: a module may import its own subpackage and those below it
LAYERS = [{"train", "evaluate", "posthoc", "fetch", "cli"}, {"training", "evaluation"},
          {"run", "lift"}, {"ema"}, {"nets"}, {"core"}]
ENTRY_POINTS = {"explore.train", "explore.evaluate", "explore.posthoc", "explore.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of `explore` (or other top-level name) a file imports, anywhere in it."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return next((k for k, names in enumerate(LAYERS) if part in names), -1)


def test_few_modules_at_the_top_and_a_docstring_per_subpackage():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "May import" in doc or init.parent.name == "ema", init
    assert not (PACKAGE / "bench.py").exists() and not (PACKAGE / "ema_overhead.py").exists()


def test_imports_point_down_and_form_no_cycle(graph):
    for module, deps in graph.items():
        for dep in deps:
            if dep == "explore" or _layer(dep) < 0 or _layer(module) < 0:
                continue
            same = module.split(".")[:2] == dep.split(".")[:2] or _layer(module) == _layer(dep) == 0
            # (the entry points share explore.cli)
            assert same or _layer(dep) > _layer(module), f"{module} imports {dep} (upwards)"
    done = set()

    def visit(m, stack):
        assert m not in stack, "import cycle: " + " -> ".join([*stack, m])
        if m in done:
            return
        for d in graph[m]:
            visit(d, [*stack, m])
        done.add(m)

    for m in graph:
        visit(m, [])


def test_only_the_entry_points_read_the_config():
    readers = {_module_name(p) for p in PACKAGE.rglob("*.py")
               if any(i.split(".")[0] == "omegaconf" for i in _imports(p))}
    assert readers <= ENTRY_POINTS | {"explore.core.config"}, readers
    assert len(readers) <= 6


def test_ema_imports_nothing_of_explore_outside_itself_but_core(graph):
    for module, deps in graph.items():
        if module.startswith("explore.ema"):
            outside = {d for d in deps if not d.startswith(("explore.ema", "explore.core"))}
            assert not outside, (module, outside)


# -- run folders from before the move ------------------------------------------------------------
OLD = {"explore.nets.models.": "explore.models.", "explore.nets.data.": "explore.data.",
       "explore.nets.diffusion.": "explore.diffusion."}


def _as_before(tree):
    """A config tree with the `_target_`s this harness saved before explore/ had subpackages."""
    if isinstance(tree, dict):
        out = {k: _as_before(v) for k, v in tree.items()}
        for new, old in OLD.items():
            if str(out.get("_target_", "")).startswith(new):
                out["_target_"] = old + out["_target_"][len(new):]
        return out
    return [_as_before(v) for v in tree] if isinstance(tree, list) else tree


@pytest.mark.filterwarnings("ignore:eval.num_images")
def test_a_run_folder_saved_before_the_move_evaluates_and_resumes(tiny_cfg, eval_cfg, run_copy):
    run = run_copy("model=baseline", "trainer.epochs=1", "data.num_images=32")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["_target_"] == "explore.nets.models.BaselineUNet"
    (run / "config.yaml").write_text(yaml.safe_dump(_as_before(config)))
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state["config"] = _as_before(state["config"])
        torch.save(state, path)
    saved = torch.load(run / "checkpoints" / "epoch_0001.pt", weights_only=True)["config"]
    assert saved["model"]["_target_"] == "explore.models.BaselineUNet"
    out = ev.evaluate(eval_cfg(f"run_dir={run}", "eval.weights=[raw]"))
    assert [r["weights"] for r in rows(out)] == ["raw"]
    train(tiny_cfg("model=baseline", "trainer.epochs=2", "data.num_images=32", "resume=true"),
          run)  # the same experiment
    events = json.loads((run / "run.json").read_text())["history"]
    assert [e["event"] for e in events] == ["start", "resume"]


# -- the whole repository: no import cycle, no private names across modules ----------------------
PACKAGES = ("explore", "bench", "analysis", "launch", "hydra_plugins")


def _repo_modules() -> dict[str, Path]:
    return {_module_name(p): p for name in PACKAGES for p in sorted((REPO / name).rglob("*.py"))}


def _import_statements(path: Path):
    """(module, names) of every import in a file, anywhere in it (in functions too): `import a.b`
    gives ("a.b", []), `from .x import y` the absolute module and ["y"]."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield base, [a.name for a in node.names]


def _module_edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The repository's modules a file imports: `from p import m` is an edge to the module p.m
    where there is one, else to p; `import a.b.c` to the longest of a.b.c, a.b, a that is one."""
    out = set()
    for base, names in _import_statements(path):
        if not names:
            parts = base.split(".")
            out.update(next(([".".join(parts[:k])] for k in range(len(parts), 0, -1)
                             if ".".join(parts[:k]) in modules), []))
        for name in names:
            target = f"{base}.{name}" if f"{base}.{name}" in modules else base
            out.update([target] if target in modules else [])
    return out - {_module_name(path)}


def test_no_import_cycle_anywhere_in_the_repository():
    """explore, bench, analysis, launch and hydra_plugins together, in-function imports
    included: a module never needs itself, however far round."""
    modules = _repo_modules()
    graph = {m: _module_edges(p, modules) for m, p in modules.items()}
    done: set[str] = set()

    def visit(m, stack):
        assert m not in stack, "import cycle: " + " -> ".join([*stack[stack.index(m):], m])
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, [*stack, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_no_module_imports_a_private_name_of_another():
    """A name starting with `_` is its module's own: `from x import _name` (or `import x._y`)
    is a sign that the name belongs elsewhere."""
    found = []
    for module, path in _repo_modules().items():
        for base, names in _import_statements(path):
            if base == "__future__":
                continue
            private = [n for n in names if n.startswith("_")]
            private += [base] if any(p.startswith("_") for p in base.split(".")) else []
            found += [f"{module}: from {base} import {n}" for n in private]
    assert not found, found


def _part(module: str, package: str) -> str:
    """The subpackage (or top-level module) of `package` a module belongs to: "stats" for
    analysis.stats.seeds, "report" for analysis.report, "" for the package itself."""
    rest = module[len(package):].lstrip(".")
    return rest.split(".")[0].removeprefix("__main__")


# what each part of analysis/ and bench/ may import of its own package (besides itself)
ANALYSIS_MAY_IMPORT = {"load": set(), "stats": {"load"}, "tables": {"load", "stats"},
                       "figures": {"load", "stats"},
                       "sections": {"load", "stats", "tables", "figures"}, "page": set(),
                       "report": {"load", "stats", "tables", "figures", "sections", "page"},
                       "": {"load", "stats", "tables", "figures", "sections", "page", "report"}}
BENCH_MAY_IMPORT = {"common": set(), "hotpath": {"common"}, "gpu": {"common"},
                    "": {"hotpath", "gpu"}, "gpu_check": {"gpu"}, "ema_overhead": {"hotpath"}}


@pytest.mark.parametrize("package, may_import", [("analysis", ANALYSIS_MAY_IMPORT),
                                                 ("bench", BENCH_MAY_IMPORT)])
def test_analysis_and_bench_import_down_their_pipeline(package, may_import):
    """analysis: load -> stats -> tables, figures -> sections -> page, report; bench: the entry
    points -> hotpath | gpu (never each other) -> common."""
    modules = _repo_modules()
    for module, path in modules.items():
        if module.split(".")[0] != package:
            continue
        part = _part(module, package)
        for dep in _module_edges(path, modules):
            if dep.split(".")[0] == package and _part(dep, package) != part:
                assert _part(dep, package) in may_import[part], f"{module} imports {dep}"


def test_analysis_function_names_are_unique():
    """One name, one function: a reader who greps a name finds the one it means."""
    seen: dict[str, str] = {}
    for module, path in _repo_modules().items():
        if not module.startswith("analysis"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                assert node.name not in seen, f"{node.name}: {seen.get(node.name)} and {module}"
                seen[node.name] = module


def test_experiment_presets_do_not_read_study_keys_and_study_presets_share_a_base():
    """A study preset says what its study does under an experiment
    (conf/study/experiment/<experiment>/<study>.yaml); an experiment preset never reads it back."""
    conf = REPO / "conf"
    for path in (conf / "experiment").glob("*.yaml"):
        text = path.read_text()
        assert "${oc.select:study." not in text and "${study." not in text, path
    for name in ("ema_vs_raw", "ema_length"):
        preset = yaml.safe_load((conf / "study" / f"{name}.yaml").read_text())
        assert preset["defaults"][0] == "base", name
