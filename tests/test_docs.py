"""Docs are tests: every fenced ``bash`` / ``python`` / ``toml`` block of README.md and docs/*.md runs here, as
written, on the demo world (issue 21).

How a block is treated:

* ``bash``: each command (continuation lines joined, comments dropped) runs in one shared sandbox folder,
  in file order, and must exit 0. The sandbox holds the demo world at ``mmprompt-demo/data`` (what
  ``mmprompt demo`` generates), a link to the repository's ``tests/`` (``mmprompt parity --reference
  tests/data/...``), an empty ``MMPROMPT_CACHE`` and ``MMPROMPT_OFFLINE=1``: no test ever downloads weights.
* ``python``: executed in a fresh namespace with the sandbox as the working directory; must not raise.
* ``toml``: parsed.

A block or command that cannot run here as it is written has an entry in :data:`POLICY`, the one reviewed
list of exceptions (matched by a substring of the command or snippet; every entry must match a block, so a
stale entry fails too). Modes:

``append``       run with ``args`` appended (shorter overrides: fewer epochs, one seed); ``slow`` marks it.
``clean-fail``   needs real data / weights / a GPU: run as written and require the documented clean failure:
                 an exit code among ``codes``, one ``mmprompt CMD: error (...)`` line, no traceback.
``dry-run``      a sweep or a download on real data: run with ``--dry-run`` appended (the whole plan is
                 computed, nothing trains or downloads), exit 0.
``parse``        a sweep on real data without ``--dry-run`` (``benchmark``): the command line is parsed by
                 mmprompt's own parser, which checks every option and value; the run itself is not started.
``help``         another program's command (``ray start``): ``PROG SUB --help`` must succeed and list every
                 option the command uses.
``install``      the install line: every ``pip install`` part names packages/extras that pyproject.toml
                 declares (pip itself is not run); the ``mmprompt`` part runs with ``args`` (``slow``).
``pytest``       the test command: collected with ``--collect-only``; nothing may be skipped for a missing
                 package.
``py-clean-fail`` a snippet that needs real weights or a GPU: must raise a user error (one that
                 :func:`mmprompt.errors.classify_error` reports in one line) of a type in ``errors``.
``py-bind``      a snippet that starts a sweep on real data: the named ``callables`` are replaced by stubs that
                 bind the call to the real signature (a wrong name or argument fails), nothing runs.
``fragment``     an excerpt of a file that the tests run (the guide's excerpts of ``tests/plugin_probe``): it
                 must compile, and every name it defines must be defined in ``source``.

Blocks without an entry run as written: a new block is never skipped silently; if it cannot run here, add a
reviewed entry below.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python", "toml": "toml"}
REAL = "needs the real benchmarks (--data-root /data) and CLIP weights (ViT-B/16), or a GPU"

POLICY: list[dict[str, Any]] = [
    # ---- README: the two commands
    {"match": 'pip install torch==2.13.0 -e ".[dev]"', "mode": "install", "slow": True,
     "args": ["--seeds", "1", "--set", "optim.epochs=2"],
     "reason": "pip is not run inside the tests; the demo runs with one seed and 2 epochs"},
    {"match": "python -m pytest", "mode": "pytest", "reason": "the suite cannot run itself; collected instead"},
    # ---- README: the demo world
    {"match": "mmprompt train --config maple_b2n --dataset mmprompt_demo", "mode": "append",
     "args": ["optim.epochs=1"], "reason": "1 epoch instead of the preset's 5 (seconds; the Predictor uses it)"},
    {"match": 'mmprompt.clip.load("ViT-B/16", device="cuda"', "mode": "py-clean-fail",
     "errors": ("WeightsUnavailableError", "DeviceError"), "reason": REAL},
    # ---- README: the paper on real data
    {"match": "mmprompt benchmark base2novel --method maple --config maple_b2n", "mode": "parse", "reason": REAL},
    {"match": "mmprompt train --config maple_b2n --dataset eurosat", "mode": "clean-fail", "codes": (3, 4),
     "reason": REAL},
    {"match": "mmprompt eval --checkpoint runs/eurosat", "mode": "clean-fail", "codes": (3, 4), "reason": REAL},
    {"match": "mmprompt predict --checkpoint runs/eurosat", "mode": "clean-fail", "codes": (3, 4),
     "reason": REAL + "; photo1.jpg is a placeholder"},
    {"match": "mmprompt import-official output/base2new", "mode": "clean-fail", "codes": (3, 4, 5),
     "reason": "needs an official (Dassl) output folder"},
    {"match": "mmprompt benchmark few-shot --method coop zeroshot --datasets mmprompt_demo", "mode": "append",
     "slow": True, "args": ["--seeds", "1", "--set", "optim.epochs=1"],
     "reason": "one seed and 1 epoch instead of 3 seeds of the presets' epochs"},
    {"match": "mmprompt reproduce maple --data-root /data", "mode": "dry-run",
     "reason": REAL + " (also the Ray section's --gpus-per-run 0.25 line)"},
    {"match": "mmprompt reproduce maple-table --data-root /data", "mode": "dry-run",
     "reason": REAL + " (also the Ray section's multi-node line, which needs a Ray cluster)"},
    {"match": "mmprompt reproduce maple --datasets mmprompt_demo", "mode": "append", "slow": True, "args": [],
     "reason": "trains MaPLe for 2 epochs (about a minute on one thread)"},
    # ---- README: Ray
    {"match": "mmprompt benchmark base2novel --method maple --datasets eurosat dtd ucf101", "mode": "parse",
     "reason": REAL},
    {"match": "ray start --head", "mode": "help", "slow": True,
     "reason": "starts a cluster that outlives the test (ray's own CLI takes ~20 s to start: slow)"},
    {"match": "ray start --address", "mode": "help", "slow": True, "reason": "joins a cluster"},
    {"match": "run_protocol(\"base2novel\", [\"maple\", \"kgcoop\"]", "mode": "py-bind",
     "callables": ("run_protocol", "LaunchOptions"), "reason": REAL},
    # ---- README: speed
    {"match": "mmprompt speed --method maple --clip demo", "mode": "append", "args": ["--no-isolate"],
     "reason": "measured in this process (no child processes): seconds instead of a minute"},
    # ---- README: real benchmarks (downloads are off in the tests: MMPROMPT_OFFLINE and a closed proxy)
    {"match": "mmprompt data download all --data-root /data", "mode": "dry-run",
     "reason": "downloads about 65 GB from the datasets' hosts; the plan is computed (also the --dry-run line)"},
    {"match": "mmprompt data download imagenet --data-root /data --from-archive", "mode": "clean-fail",
     "codes": (3,), "reason": "needs the user's own ILSVRC2012 archives"},
    # ---- docs/writing-a-method.md: excerpts of the probe package that tests/test_plugin.py installs and trains
    {"match": "class ProbeConfig(CoOpConfig)", "mode": "fragment",
     "source": "tests/plugin_probe/mmprompt_probe/__init__.py", "reason": "excerpt of the probe package"},
    {"match": "class Gained(LearnerWrapper)", "mode": "fragment", "source": "tests/test_method_contract.py",
     "reason": "excerpt of the wrapper the contract tests train"},
    {"match": "class LoRADelta(nn.Module)", "mode": "fragment", "source": "src/mmprompt/methods/clip_lora.py",
     "reason": "excerpt of CLIP-LoRA's update and hook"},
    {"match": "class DescribedProbe(Probe)", "mode": "fragment",
     "source": "tests/plugin_probe/mmprompt_probe/described.py", "reason": "excerpt of the probe_described plugin"},
    {"match": "class TwoPaths(CoOp)", "mode": "fragment", "source": "tests/plugin_probe/mmprompt_probe/paths.py",
     "reason": "excerpt of the probe_paths plugin"},
    {"match": "SPEC = MethodSpec(", "mode": "fragment", "source": "tests/plugin_probe/mmprompt_probe/__init__.py",
     "reason": "excerpt of the probe package's table row"},
]


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def doc_blocks() -> list[Block]:
    """Every fenced block of a runnable language in the docs, in file order."""
    blocks = []
    fence = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.M | re.S)
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in fence.finditer(text):
            lang = m.group(1).lower()
            if lang in RUNNABLE:
                blocks.append(Block(path, text.count("\n", 0, m.start()) + 1, RUNNABLE[lang], m.group(2)))
    return blocks


def commands(block_text: str) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, comment lines and comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block_text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line.split("  #")[0].strip() if "  #" in line else line.strip())
    return out


def policy_for(text: str) -> dict[str, Any] | None:
    hits = [p for p in POLICY if p["match"] in text]
    assert len(hits) <= 1, f"several policy entries match {text[:80]!r}: {[p['match'] for p in hits]}"
    return hits[0] if hits else None


# ------------------------------------------------------------------------------------------------ sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from mmprompt.demo.world import generate_demo_dataset

    root = tmp_path_factory.mktemp("docs")
    generate_demo_dataset(root / "mmprompt-demo" / "data")
    (root / "tests").symlink_to(REPO / "tests")
    (root / "cache").mkdir()
    yield root


def _env(sandbox: Path) -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH", "")
    # no block reaches outside the machine: downloads are off, and any HTTP(S) request goes to a closed local port
    no_net = {"HF_HUB_OFFLINE": "1", **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                                                        "HTTPS_PROXY")}, "no_proxy": "", "NO_PROXY": ""}
    return {**os.environ, **no_net, "MMPROMPT_CACHE": str(sandbox / "cache"), "MMPROMPT_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": src + (os.pathsep + path if path else ""), "COLUMNS": "120"}


def _run(cmd: str, sandbox: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one command in the sandbox. ``mmprompt ...`` runs in this process through ``mmprompt.cli.main`` with
    the command's own words (what the console script does, without paying for a new interpreter each time);
    any other program runs as a subprocess."""
    words = shlex.split(cmd)
    if words[0] == "mmprompt" and not any(c in cmd for c in ("|", "&&", ";", ">")):
        return _run_in_process(words, sandbox)
    assert shutil.which(words[0]), f"{words[0]} is not on PATH"
    return subprocess.run(["bash", "-c", cmd], cwd=sandbox, env=_env(sandbox), capture_output=True, text=True,
                          timeout=timeout)


def _run_in_process(words: list[str], sandbox: Path) -> subprocess.CompletedProcess[str]:
    import contextlib
    import io

    from mmprompt.cli import main

    out, err = io.StringIO(), io.StringIO()
    before, env = os.getcwd(), dict(os.environ)
    try:
        os.chdir(sandbox)
        os.environ.update({k: v for k, v in _env(sandbox).items() if k.startswith("MMPROMPT")})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(words[1:])
            except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - a bug: reported with its traceback, like the console script
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.chdir(before)
        os.environ.clear()
        os.environ.update(env)
    return subprocess.CompletedProcess(words, code, out.getvalue(), err.getvalue())


def _ok(proc: subprocess.CompletedProcess[str], cmd: str) -> None:
    assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{cmd}\n{proc.stderr[-3000:]}"


def _with_args(cmd: str, args: list[str]) -> str:
    return cmd + "".join(f" {shlex.quote(a)}" for a in args)


# ------------------------------------------------------------------------------------------------ modes
def _run_bash(cmd: str, policy: dict[str, Any] | None, sandbox: Path) -> None:
    mode = policy["mode"] if policy else "run"
    if mode == "run":
        _ok(_run(cmd, sandbox), cmd)
    elif mode == "append":
        full = _with_args(cmd, policy["args"])
        _ok(_run(full, sandbox), full)
    elif mode == "dry-run":
        full = _with_args(cmd, ["--dry-run"])
        proc = _run(full, sandbox)
        _ok(proc, full)
        # a sweep's plan prices its runs; a download's plan lists files, sizes, hosts and the disk space needed
        assert ("disk space" in proc.stdout or "free at" in proc.stdout) if " download " in cmd \
            else "estimated GPU hours" in proc.stdout
    elif mode == "clean-fail":
        proc = _run(cmd, sandbox, timeout=300)
        command = cmd.split()[1]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"mmprompt {command}: error (")]
        assert proc.returncode in policy["codes"], f"{cmd}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    elif mode == "parse":
        from mmprompt.cli import build_parser
        from mmprompt.commands.benchmark import launch_options

        argv = shlex.split(cmd)[1:]
        args = build_parser([argv[0]]).parse_args(argv)  # argparse exits (2) on any unknown option or bad value
        if hasattr(args, "launcher"):
            launch_options(args)  # the launcher's values (GPUs, CPUs, retries) are valid
    elif mode == "help":
        words = shlex.split(cmd)
        proc = _run(f"{words[0]} {words[1]} --help", sandbox, timeout=120)
        _ok(proc, f"{words[0]} {words[1]} --help")
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert option in proc.stdout, f"{option} is not an option of {words[0]} {words[1]}"
    elif mode == "install":
        _check_install(cmd, policy, sandbox)
    elif mode == "pytest":
        proc = subprocess.run([sys.executable, *shlex.split(cmd)[1:], "--collect-only", "-q", "-m", ""], cwd=REPO,
                              env=_env(sandbox), capture_output=True, text=True, timeout=600)
        _ok(proc, cmd)
        assert not re.search(r"\d+ skipped", proc.stdout), proc.stdout[-3000:]  # e.g. open_clip not installed
        _test_dependencies_present()
    else:
        raise AssertionError(f"unknown mode {mode!r} for {cmd!r}")


def _check_install(cmd: str, policy: dict[str, Any], sandbox: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    declared = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in project["dependencies"]}
    extras = project.get("optional-dependencies", {})
    ran_mmprompt = False
    for part in (p.strip() for p in cmd.split("&&")):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"]:
            for w in words[2:]:
                if w.startswith("-") and w not in ("-e",):
                    assert w in ("--no-deps",), f"unexpected pip option {w}"
                    continue
                if w == "-e":
                    continue
                if w.startswith("."):
                    for extra in re.findall(r"\[([^\]]+)\]", w):
                        assert all(e in extras for e in extra.split(",")), f"pyproject has no extra {extra}"
                    continue
                name = re.split(r"[<>=!~\[]", w)[0].lower()
                assert name in declared or name in _dev_test_packages(), f"{name} is not a declared dependency"
        elif words[0] == "mmprompt":
            full = _with_args(part, policy["args"])
            _ok(_run(full, sandbox), full)
            ran_mmprompt = True
    assert ran_mmprompt


def _test_dependencies_present() -> None:
    """Every package a test skips without (``pytest.importorskip`` of a name, open_clip's ``skipif``) is
    installed by the README's install command: no test is skipped for a missing package at run time either."""
    import importlib.util

    names = set()
    for path in (REPO / "tests").glob("*.py"):
        names |= set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text(encoding="utf-8")))
    missing = sorted(n for n in names if importlib.util.find_spec(n) is None)
    assert not missing, f"tests would skip for lack of {missing}"
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from _torchvision_stub import import_open_clip

        assert import_open_clip() is not None, "open_clip is not installed (README: pip install --no-deps ...)"
    finally:
        sys.path.remove(str(REPO / "tests"))


def _dev_test_packages() -> set[str]:
    """Packages installed for the tests only (named in the README's dependency table)."""
    return {"open_clip_torch"}


def _exec_python(block: Block, policy: dict[str, Any] | None, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    mode = policy["mode"] if policy else "run"
    code = compile(block.text, block.id, "exec")
    monkeypatch.chdir(sandbox)
    for key, value in _env(sandbox).items():
        if key.startswith("MMPROMPT") or key == "OMP_NUM_THREADS":
            monkeypatch.setenv(key, value)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if mode == "run":
        exec(code, namespace)
        capsys.readouterr()
    elif mode == "py-clean-fail":
        from mmprompt.errors import classify_error

        with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below
            exec(code, namespace)
        assert type(info.value).__name__ in policy["errors"], repr(info.value)
        assert classify_error(info.value) is not None
    elif mode == "py-bind":
        _exec_bound(block, code, policy["callables"], monkeypatch)
    elif mode == "fragment":
        tree = ast.parse(block.text)
        source = ast.parse((REPO / policy["source"]).read_text())
        defined = {n.name for n in source.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        defined |= {t.id for n in source.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert names and names <= defined, f"{sorted(names - defined)} are not in {policy['source']}"
    else:
        raise AssertionError(f"unknown mode {mode!r} for {block.id}")


def _exec_bound(block: Block, code: Any, callables: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the snippet with ``callables`` replaced by stubs that check each call against the real signature."""
    import importlib

    calls: list[str] = []
    tree = ast.parse(block.text)
    modules = {a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    for name in callables:
        module = importlib.import_module(modules[name])
        real = getattr(module, name)

        def stub(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            inspect.signature(_real).bind(*args, **kwargs)  # TypeError on a wrong name or argument
            if isinstance(_real, type) and _name == "LaunchOptions":
                return _real(*args, **kwargs)  # a dataclass: building it checks the values
            calls.append(_name)
            return {}

        monkeypatch.setattr(module, name, stub)
    exec(code, {"__name__": "__docs__"})
    assert calls, f"none of {callables} was called by {block.id}"


# ------------------------------------------------------------------------------------------------ tests
BLOCKS = doc_blocks()


def _marks(block: Block) -> list[Any]:
    if block.lang == "bash":
        slow = any((policy_for(c) or {}).get("slow") for c in commands(block.text))
    else:
        slow = bool((policy_for(block.text) or {}).get("slow"))
    return [pytest.mark.slow] if slow else []


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=_marks(b)) for b in BLOCKS])
def test_doc_block_runs_as_written(block: Block, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    if block.lang == "toml":
        tomllib.loads(block.text)
    elif block.lang == "python":
        _exec_python(block, policy_for(block.text), sandbox, monkeypatch, capsys)
    else:
        cmds = commands(block.text)
        assert cmds, f"{block.id}: an empty bash block"
        for cmd in cmds:
            _run_bash(cmd, policy_for(cmd), sandbox)


def test_every_policy_entry_matches_a_block_and_says_why() -> None:
    texts = [c for b in BLOCKS if b.lang == "bash" for c in commands(b.text)]
    texts += [b.text for b in BLOCKS if b.lang != "bash"]
    for entry in POLICY:
        assert any(entry["match"] in t for t in texts), f"stale policy entry: {entry['match']!r}"
        assert entry.get("reason"), entry["match"]


def test_the_runner_finds_the_readme_blocks() -> None:
    readme = [b for b in BLOCKS if b.file.name == "README.md"]
    assert len(readme) >= 12 and {b.lang for b in readme} == {"bash", "python"}
    assert commands("mmprompt a \\\n  --b c   # note\n# only a comment\nmmprompt d") == ["mmprompt a --b c",
                                                                                        "mmprompt d"]


def test_ci_runs_exactly_the_readme_commands() -> None:
    """.ci/run installs and tests with the README's two commands, word for word."""
    ci = (REPO / ".ci" / "run").read_text()
    readme = [b for b in BLOCKS if b.file.name == "README.md" and b.lang == "bash"]
    install, tests = commands(readme[0].text)[0], commands(readme[1].text)[0]
    assert install.startswith("pip install") and tests == "python -m pytest"
    assert install in ci and f"\n{tests}\n" in ci


def test_readme_states_the_parity_tolerance_the_tool_checks() -> None:
    from mmprompt.parity import RTOL

    exact = (REPO / "README.md").read_text().split("* **Exact.**")[1].split("* **")[0]
    assert f"{RTOL:.0e}".replace("e-0", "e-") in exact and "1e-5" not in exact  # 1e-4


def test_default_output_folders_are_git_ignored() -> None:
    """``mmprompt demo`` and ``mmprompt reproduce`` write ./mmprompt-demo and ./mmprompt-reproduce by default."""
    from mmprompt.cli import build_parser

    ignored = (REPO / ".gitignore").read_text().split()
    for argv in (["demo"], ["reproduce", "maple"]):
        default = build_parser([argv[0]]).parse_args(argv).output
        assert f"/{default}/" in ignored, default
