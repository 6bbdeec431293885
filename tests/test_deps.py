"""dvc.yaml declares, for every stage, every module of this package its command imports (the
import closure of the stage's module, found by reading the source), so `dvc repro` reruns
whatever a change can affect."""
import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "latentwire"


def imported(module: str) -> set[str]:
    """The package modules that `module` imports (relative or absolute, at any depth)."""
    out = set()
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("latentwire"):
                parts = (node.module or "").split(".")
                name = parts[0] if node.level == 1 else (parts[1] if len(parts) > 1 else "")
                out |= {name} if name else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("latentwire.")}
    return {m for m in out if (PKG / f"{m}.py").is_file()}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imported(m)
    return seen


def stage_commands() -> dict[str, tuple[str, list[str]]]:
    """stage name -> (its `python -m latentwire <command>`, its deps), foreach stages expanded."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        if "foreach" in st:
            for key in st["foreach"]:
                out[f"{name}@{key}"] = (st["do"]["cmd"].split()[3], st["do"]["deps"])
        else:
            out[name] = (st["cmd"].split()[3], st["deps"])
    return out


def test_every_stage_declares_its_import_closure():
    from latentwire.__main__ import STAGES
    gaps = {}
    for stage, (command, deps) in stage_commands().items():
        need = {f"src/latentwire/{m}.py" for m in closure(STAGES[command][0]) | {"__main__"}}
        missing = need - set(deps)
        if missing:
            gaps[stage] = sorted(missing)
    assert not gaps, f"dvc.yaml stages miss modules their command imports: {gaps}"


def test_the_closure_finder_sees_relative_and_absolute_imports():
    # prepare imports `from latentwire import data` (absolute) and data has no package imports
    assert {"config", "data", "io"} <= closure("prepare") and closure("metrics") == {"metrics"}
    assert "llm" in closure("kd") and "placement" in closure("kd")


def test_the_cli_imports_only_the_chosen_commands_module():
    import subprocess
    import sys
    code = ("import sys; from latentwire.__main__ import main; main(['report', '--help'])")
    r = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True)
    probe = ("import sys, contextlib, io\nfrom latentwire.__main__ import main\n"
             "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
             "    main(['prepare-mix', '--help'])\n"
             "print(sorted(m.split('.')[1] for m in sys.modules if m.startswith('latentwire.')))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(eval(r.stdout.strip().splitlines()[-1]))
    assert loaded == closure("prepare") | {"__main__"}, loaded
