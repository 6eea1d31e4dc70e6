"""Fault injection on training runs: kill -9 inside each atomic write, two runs on one folder, a full disk,
resume rules, and the files a run leaves. Every test checks the message and that nothing was lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmprompt.cli import main
from mmprompt.runlock import LOCK_FILE, RunLock
from test_engine_support import make_data_root, one_thread, save_tiny_clip

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
FAST = ["optim.epochs=3", "method.depth=2", "log.every=1"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("faults")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMPROMPT_CACHE", str(base / "cache"))
    root = make_data_root(base / "data")
    weights = save_tiny_clip(base / "tiny.pt")

    def argv(out: Path, *extra: str) -> list[str]:
        return ["train", "--config", "maple_b2n", "--dataset", "eurosat", "--data-root", str(root), "--clip",
                str(weights), "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2",
                "--num-workers", "0", "--device", "cpu", "--no-progress", *extra, "--set", *FAST]

    ref = base / "ref"
    assert main(argv(ref)) == 0
    yield {"base": base, "root": root, "weights": weights, "argv": argv, "ref": ref}
    mp.undo()


def _prompts(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "prompts.safetensors"))


def _same_prompts(a: Path, b: Path) -> bool:
    pa, pb = _prompts(a), _prompts(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("seconds", None)
        out.append(r)
    return out


def _temps(run: Path) -> list[Path]:
    return [p for p in run.rglob("*.tmp")]


# ------------------------------------------------------------------------------------------ kill -9
KILLER = """
import os, signal, sys
from pathlib import Path
target, nth = os.environ["KILL_AT"], int(os.environ.get("KILL_NTH", "1"))
real_fsync = os.fsync
seen = [0]
def fsync(fd):
    name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
    if name.startswith("." + target + "."):   # the temporary file of an atomic write of `target`
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # inside the write: data written, not yet renamed
    return real_fsync(fd)
os.fsync = fsync
import torch; torch.set_num_threads(1)
from mmprompt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_run(env, out: Path, target: str, nth: int = 1) -> subprocess.CompletedProcess:
    script = env["base"] / "killer.py"
    script.write_text(KILLER)
    envvars = {**os.environ, "KILL_AT": target, "KILL_NTH": str(nth), "PYTHONPATH": f"{SRC}:{TESTS}"}
    return subprocess.run([sys.executable, str(script), *env["argv"](out, "--resume")], env=envvars, capture_output=True,
                          text=True, timeout=300)


KILL_POINTS = [("state.pt", 2), ("config.yaml", 1), ("prompts.safetensors", 1), ("prompts.json", 1),
               ("metrics.json", 1), ("log.jsonl", 1)]


@pytest.mark.parametrize("target,nth", [pytest.param(t, n, marks=[] if t == "state.pt" else [pytest.mark.slow])
                                        for t, n in KILL_POINTS])
def test_kill9_inside_each_atomic_write_then_resume(env, tmp_path: Path, target: str, nth: int) -> None:
    out = tmp_path / "run"
    if target == "log.jsonl":  # log.jsonl is rewritten atomically when a resumed run truncates it
        assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
        with (out / "log.jsonl").open("a") as f:  # a step of epoch 2, as a run killed in epoch 2 leaves
            f.write(json.dumps({"event": "step", "epoch": 2, "step": 1, "loss": 1.0}) + "\n")
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name == target}
    proc = _killed_run(env, out, target, nth)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    for p in out.rglob(target):  # the killed write left the old file (or none), never a half-written one
        assert p.name not in before or p.read_bytes() == before[p.name]
    assert main(env["argv"](out, "--resume")) == 0
    assert not _temps(out), "temporary files of the killed write must be removed"
    assert _same_prompts(out, env["ref"])  # bit-exact resumption: nothing lost
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"
    epochs = [r["epoch"] for r in _records(out) if r.get("event") == "epoch"]
    assert epochs == [1, 2, 3]


# ------------------------------------------------------------------------------------------ two runs
def test_second_run_on_a_held_folder_is_refused_and_writes_nothing(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    with RunLock(out, command="test holder"):
        for extra in ((), ("--resume",)):
            assert main(env["argv"](out, *extra)) == 7
            err = capsys.readouterr().err
            assert str(out) in err and f"process {os.getpid()}" in err and "started" in err
            assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the refused runs
    assert main(env["argv"](out)) == 0  # released: the folder is usable
    assert _same_prompts(out, env["ref"])


def test_lock_of_a_killed_process_does_not_block(env, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = f"import sys; sys.path.insert(0, {SRC!r}); from mmprompt.runlock import RunLock; " \
           f"RunLock({str(out)!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == holder.pid
        assert main(env["argv"](out)) == 7
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(env["argv"](out)) == 0  # the kernel released the lock with the process


@pytest.mark.slow
def test_two_concurrent_processes_one_refused(env, tmp_path: Path) -> None:
    out = tmp_path / "run"
    envvars = {**os.environ, "PYTHONPATH": f"{SRC}:{TESTS}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmprompt.cli", *env["argv"](out)]
    first = subprocess.Popen(cmd, env=envvars, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    procs = [first, subprocess.Popen(cmd, env=envvars, stderr=subprocess.PIPE, text=True)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 7]
    assert _same_prompts(out, env["ref"])
    assert [r["epoch"] for r in _records(out) if r.get("event") == "epoch"] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ full disk
def test_full_disk_names_the_file_and_loses_nothing(env, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    real = os.fsync

    def full(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".metrics.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(env["argv"](out)) == 5
    err = capsys.readouterr().err
    assert f"cannot write {out / 'metrics.json'}: No space left on device" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists() and not _temps(out)
    monkeypatch.setattr(os, "fsync", real)
    assert main(env["argv"](out, "--resume")) == 0  # the trained state was kept
    assert _same_prompts(out, env["ref"])


def test_full_disk_inside_torch_save_names_the_state_file(tmp_path: Path, monkeypatch) -> None:
    from mmprompt.engine.checkpoint import save_state
    from mmprompt.fileio import WriteError

    path = tmp_path / "checkpoint" / "state.pt"
    save_state(path, {"epoch": 1})
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(WriteError, match=r"cannot write .*state.pt: No space left on device"):
        save_state(path, {"epoch": 2})
    monkeypatch.setattr(os, "fsync", real)
    assert torch.load(path, weights_only=True)["epoch"] == 1 and not _temps(tmp_path)


# ------------------------------------------------------------------------------------------ files
def test_result_files_follow_the_umask(env, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(env["argv"](out)) == 0
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.json", "prompts.json", "prompts.safetensors", "checkpoint/state.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_identical_runs_write_identical_prompt_files(env, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(env["argv"](out)) == 0
    assert (out / "prompts.safetensors").read_bytes() == (env["ref"] / "prompts.safetensors").read_bytes()


def test_safetensors_header_is_canonical() -> None:
    from safetensors.torch import load, save

    from mmprompt.checkpoint import canonical_safetensors

    t = {"b": torch.zeros(2), "a": torch.ones(3)}
    one = canonical_safetensors(save(t, metadata={"format": "x", "method": "m", "z": "1"}))
    two = canonical_safetensors(save(t, metadata={"z": "1", "method": "m", "format": "x"}))
    assert one == two
    assert all(torch.equal(load(one)[k], t[k]) for k in t)


def test_resume_truncates_logs_and_tensorboard_and_keeps_final_loss(env, tmp_path: Path, monkeypatch) -> None:
    import mmprompt.engine.train as train_mod

    out = tmp_path / "run"
    assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
    real = train_mod.save_state

    def crash(*args, **kwargs):  # a crash at the end of epoch 2, after its steps were logged
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_state", crash)
    assert main(env["argv"](out, "--resume")) == 130
    assert any(r.get("epoch") == 2 for r in _records(out))  # partial epoch 2 logged
    monkeypatch.setattr(train_mod, "save_state", real)
    assert main(env["argv"](out, "--resume")) == 0
    assert _same_prompts(out, env["ref"])
    assert _records(out) == _records(env["ref"])  # each step once, same values
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(run: Path) -> list[int]:
        acc = EventAccumulator(str(run / "tb"))
        acc.Reload()
        return sorted(e.step for e in acc.Scalars("train/loss"))

    assert steps(out) == steps(env["ref"]) and len(set(steps(out))) == len(steps(out))
    # resuming a run whose training finished (killed before its metrics): final_loss is kept
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("metrics.json", "prompts.json", "prompts.safetensors"):
        (out / name).unlink()
    assert main(env["argv"](out, "--resume")) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["train"]["final_loss"] == metrics["train"]["final_loss"] is not None
    assert again["train"]["resumed_from"] == 3


# ------------------------------------------------------------------------------------------ resume rules
def test_resume_rules(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
    # fields that cannot change results never block
    argv = env["argv"](out, "--resume", "--stop-after-epochs", "1", "--skip-corrupt")
    argv[argv.index("--num-workers") + 1] = "1"
    assert main([*argv, "log.every=5", "log.tensorboard=false"]) == 0
    capsys.readouterr()
    # a change of results is refused, listing the fields old -> new
    assert main([*env["argv"](out, "--resume"), "optim.lr=0.001", "optim.batch_size=2"]) == 4
    err = capsys.readouterr().err
    assert "optim.lr: 0.0035 -> 0.001" in err and "optim.batch_size: 4 -> 2" in err
    assert "--allow-config-change" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()
    # allowed explicitly, and recorded in log.jsonl and metrics.json
    assert main([*env["argv"](out, "--resume", "--allow-config-change"), "optim.lr=0.001"]) == 0
    changes = json.loads((out / "metrics.json").read_text())["train"]["config_changes"]
    assert changes == [{"field": "optim.lr", "old": 0.0035, "new": 0.001, "epoch": 2}]
    logged = [r for r in _records(out) if r.get("event") == "config_change"]
    assert logged and logged[0]["changes"][0]["field"] == "optim.lr"


def test_stale_temp_cleanup_touches_only_run_files(tmp_path: Path) -> None:
    from mmprompt.fileio import remove_stale_temp_files

    ours = [tmp_path / ".metrics.json.ab12cd34.tmp", tmp_path / "checkpoint" / ".state.pt.x_y9z0k1.tmp",
            tmp_path / "tb" / ".events.out.tfevents.1.host.abcdefgh.tmp"]
    theirs = [tmp_path / ".notes.txt.ab12cd34.tmp", tmp_path / "deep" / "checkpoint" / ".state.pt.ab12cd34.tmp",
              tmp_path / "metrics.json"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


# ------------------------------------------------------------------------------------------ wave 3 (issue 22)
def test_resume_after_a_real_nan_continues_with_the_new_lr(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    two_steps = "optim.batch_size=2"  # two steps per epoch: the lr jump of epoch 2 gives NaN at its step 2
    assert main([*env["argv"](out), "optim.lr=1e38", two_steps]) == 1
    err = capsys.readouterr().err
    assert "the training loss is nan at epoch 2" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["epoch"] == 1
    assert main([*env["argv"](out, "--resume", "--allow-config-change"), "optim.lr=0.002", two_steps]) == 0
    assert "Traceback" not in capsys.readouterr().err
    epochs = [r for r in _records(out) if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[1]["lr"] == pytest.approx(0.002) and epochs[2]["lr"] == pytest.approx(0.0015)
    assert all(torch.isfinite(t).all() for t in _prompts(out).values())
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(0.002)
    assert all(g["lr"] < 1 for g in state["optimizer"]["param_groups"])


def _flip_tensor_byte(state: Path) -> None:
    """Flip one byte inside the largest tensor record of a torch zip file (torch.load still reads it)."""
    import zipfile

    with zipfile.ZipFile(state) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(state.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[at] ^= 0x40
    state.write_bytes(bytes(raw))


def test_flipped_bytes_in_the_training_state_are_refused_on_resume(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(env["argv"](out, "--stop-after-epochs", "1")) == 0
    state = out / "checkpoint" / "state.pt"
    before = state.read_bytes()
    _flip_tensor_byte(state)
    torch.load(state, weights_only=True)  # still a readable file: only the checksum tells
    capsys.readouterr()
    assert main(env["argv"](out, "--resume")) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(state) in err and "corrupted" in err
    assert not (out / "metrics.json").exists() and not (out / "prompts.safetensors").exists()
    state.write_bytes(before)  # the intact state resumes to the reference result
    assert main(env["argv"](out, "--resume")) == 0
    assert _same_prompts(out, env["ref"])


def _sweep_argv(env, out: Path, *datasets: str, clip: str | None = None) -> list[str]:
    return ["benchmark", "base2novel", "--method", "zeroshot", "--datasets", *(datasets or ("eurosat",)),
            "--seeds", "1", "--data-root", str(env["root"]), "--clip", clip or str(env["weights"]),
            "--clip-activation", "quick_gelu", "--output", str(out), "--shots", "2", "--no-progress",
            "--set", "data.num_workers=0"]


def test_second_sweep_on_a_held_output_is_refused_and_writes_nothing(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    with RunLock(out, command="base2novel sweep"):  # the first sweep, still running
        assert main(_sweep_argv(env, out)) == 7
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out) in err and "base2novel sweep" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no run folder, no results, no error.log
    assert main(_sweep_argv(env, out)) == 0  # the lock went with its holder
    assert (out / "results.json").is_file() and not list(out.rglob("error.log"))


def test_sweep_checks_data_roots_and_weights_before_any_run(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    assert main(_sweep_argv(env, out, "eurosat", "stanford_cars", "dtd")) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no run was started" in err
    assert str(env["root"] / "stanford_cars") in err and str(env["root"] / "dtd") in err  # every problem at once
    assert not (out / "zeroshot").exists() and not (out / "results.json").exists()
    assert main(_sweep_argv(env, out, clip=str(tmp_path / "gone.pt"))) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and "gone.pt" in err and not (out / "zeroshot").exists()


def test_results_png_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    import mmprompt.fileio as fileio
    from mmprompt.protocols.results import aggregate, plot_results

    pytest.importorskip("matplotlib")
    written = []
    real = fileio.atomic_write_bytes
    monkeypatch.setattr(fileio, "atomic_write_bytes", lambda path, data, *a, **k: (written.append(Path(path)),
                                                                                 real(path, data, *a, **k))[1])
    results = aggregate("base2novel", {"coop": {"eurosat": {1: {"base": 80.0, "novel": 62.0}}}}, ("base", "novel"),
                        average_over=["eurosat"])
    png = tmp_path / "results.png"
    plot_results(results, png)
    assert written == [png] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ray_address_to_nothing_gives_up_after_ray_timeout(env, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    import socket

    ray = pytest.importorskip("ray")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def never(*a, **k):  # Ray's own connection attempts retry for many minutes: they must not start
        raise AssertionError("ray.init was called for an address that does not answer")

    monkeypatch.setattr(ray, "init", never)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    out = tmp_path / "sweep"
    start = time.monotonic()
    code = main([*_sweep_argv(env, out), "--launcher", "ray", "--ray-address", f"127.0.0.1:{port}",
                 "--ray-timeout", "2"])
    took = time.monotonic() - start
    err = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert code == 2 and took < 15, (code, took)
    assert "Traceback" not in err and err.count(f"--ray-address 127.0.0.1:{port} after 2 s") == 1
    assert not (out / "zeroshot").exists() and not (out / "results.json").exists()


def test_reproduce_with_a_missing_data_root_stops_before_any_run(env, tmp_path: Path, capsys) -> None:
    out = tmp_path / "repro"
    missing = tmp_path / "no-data"
    argv = ["reproduce", "coop", "--datasets", "eurosat", "--data-root", str(missing), "--clip", str(env["weights"]),
            "--clip-activation", "quick_gelu", "--output", str(out), "--seeds", "1", "--shots", "2", "--device", "cpu",
            "--no-progress", "--set", "data.num_workers=0", "optim.epochs=1"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no run was started" in err and str(missing) in err
    assert err.count("does not exist") == 1  # said once, not once per run and attempt
    assert not list(out.rglob("error.log")) and not list(out.rglob("metrics.json"))
    with RunLock(out, command="reproduce"):  # a second reproduce on a held output is refused
        argv[argv.index(str(missing))] = str(env["root"])
        assert main(argv) == 7
    assert "in use by" in capsys.readouterr().err and not list(out.rglob("metrics.json"))


def test_which_failures_are_retried() -> None:
    import errno

    from mmprompt.config import ConfigError
    from mmprompt.data import DatasetNotFoundError
    from mmprompt.engine.train import NonFiniteLossError
    from mmprompt.errors import CheckpointError, MemoryLimitError
    from mmprompt.protocols.launch import is_deterministic

    again = [None, OSError(errno.ENOSPC, "full"), OSError(errno.EIO, "io"), MemoryLimitError("oom"),
             RuntimeError("worker died")]
    never = [ConfigError("x"), DatasetNotFoundError("x"), CheckpointError("x"), FileNotFoundError("x"),
             NonFiniteLossError(1, 0, float("nan"), None, "loss")]
    assert not any(map(is_deterministic, again)) and all(map(is_deterministic, never))
