"""Training on a planted world: it learns, resumes exactly, and DDP equals one process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from slurm import srun
from synthetic import make_world

from geoconcept_cli.data.features import load_features
from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.evaluation.scores import evaluate
from geoconcept_cli.model.checkpoints import load_head, read_checkpoint, write_checkpoint
from geoconcept_cli.model.spec import ModelSpec
from geoconcept_cli.runtime.distributed import DistInfo, free_port, launch
from geoconcept_cli.training.config import TrainConfig
from geoconcept_cli.training.loop import check_run, run_training, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n_regions=8, per_region=48)


def _cfg(world, out, **kw) -> TrainConfig:
    base = dict(
        features=str(world["train"]), out=str(out), concepts=str(world["concepts"]),
        epochs=4, batch_size=32, lr=3e-3, warmup_steps=3, queue_size=32, log_every=2,
        save_every=4,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_learns_far_above_chance(world, tmp_path):
    out = tmp_path / "run"
    last = train(_cfg(world, out))
    res = evaluate(world["test"], [ModelSpec(checkpoint=out, gallery=world["gallery"])]).summary
    acc = res["models"][str(out)]["25km"]
    n_gallery = len(world["centers"]) + 300
    chance = 100 * len(world["centers"]) / n_gallery  # a random gallery pick hits a region
    assert acc > 50 and acc > 5 * chance, (acc, chance)
    divs = [json.loads(ln)["divergence"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert divs[-1] < 0.5 * divs[0]
    assert last["step"] == 4 * (8 * 48 // 32)
    assert json.loads((out / "config.json").read_text())["concepts"] == str(world["concepts"])


def test_plain_geoclip_baseline_trains(world, tmp_path):
    last = train(_cfg(world, tmp_path / "g", concepts=None, max_steps=6))
    head, ckpt = load_head(tmp_path / "g" / "checkpoint.safetensors")
    assert ckpt["kind"] == "geoclip" and "divergence" not in last and last["step"] == 6


def _crash_at_8(step, total, last):
    """A progress callback that stops a run as if killed: the last checkpoint is step 6."""
    if step == 8:
        raise KeyboardInterrupt


def test_crash_and_resume_equals_uninterrupted(world, tmp_path):
    cfg = _cfg(world, tmp_path / "a", max_steps=10, save_every=3)
    train(cfg)
    cfg_b = replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg_b, progress=_crash_at_8)
    assert read_checkpoint(cfg_b.checkpoint_path())["step"] == 6
    with pytest.warns(UserWarning, match=r"unfinished run \(step 6 of 10\)"):
        evaluate(world["test"], [ModelSpec(checkpoint=cfg_b.out, gallery=world["gallery"])])
    with pytest.raises(GeoconceptError, match="--resume"):
        train(cfg_b)
    cut = tmp_path / "b" / ".checkpoint.safetensors.x1y2.tmp"  # as a kill during a save leaves it
    cut.write_bytes(b"half a checkpoint")
    train(cfg_b, resume=True)
    assert not cut.exists()
    a = read_checkpoint(cfg.checkpoint_path())["model"]
    b = read_checkpoint(cfg_b.checkpoint_path())["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [
        json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume
    assert train(cfg_b) == {"step": 10, "done": True}  # a finished run is not redone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_run_resumes_exactly_with_features_on_either_side(world, tmp_path, monkeypatch):
    """On a GPU the batch gather, GPS noise and queue run on the device: a cut run resumes to
    the uninterrupted weights, and features too big for the GPU (left on the host) change
    nothing."""
    import geoconcept_cli.training.loop as train_module

    assert train_module.resident(torch.zeros(4), torch.device("cuda")).is_cuda  # small: moved
    cfg = _cfg(world, tmp_path / "a", max_steps=10, save_every=3, device="cuda")
    train(cfg)
    cut = replace(cfg, out=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run_training(cut, progress=_crash_at_8)
    train(cut, resume=True)
    monkeypatch.setattr(train_module, "resident", lambda features, device: features)
    host = replace(cfg, out=str(tmp_path / "c"))
    train(host)
    ref = read_checkpoint(cfg.checkpoint_path())
    for other in (cut, host):
        got = read_checkpoint(other.checkpoint_path())
        assert got["queue"]["gps"].device.type == "cpu"  # checkpoints load anywhere
        torch.testing.assert_close(got["queue"]["gps"], ref["queue"]["gps"], rtol=0, atol=0)
        for k in ref["model"]:
            torch.testing.assert_close(got["model"][k], ref["model"][k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.e2e
def test_killed_cli_run_resumes(world, tmp_path):
    """A real SIGKILL of `geoconcept train`, then --resume, ends with the same weights."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "geoconcept_cli", "train", str(world["train"]), "--out",
            str(out), "--concepts", str(world["concepts"]), "--max-steps", "12",
            "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "3", "--queue-size", "32",
            "--save-every", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(ckpt)["step"] < 12
    assert not list(out.glob("*.tmp"))
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = _cfg(world, tmp_path / "ref", max_steps=12, save_every=2, epochs=10)
    train(ref)
    a = read_checkpoint(ref.checkpoint_path())["model"]
    b = read_checkpoint(ckpt)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_checks_what_paths_hold_not_how_they_are_spelled(world, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    shutil.copytree(world["train"], tmp_path / "a" / "feats")
    monkeypatch.chdir(tmp_path / "a")  # a run started with relative paths...
    cfg = _cfg(world, "run", features="feats", max_steps=3)
    train(cfg)
    ckpt_path = tmp_path / "a" / "run" / "checkpoint.safetensors"
    ckpt = read_checkpoint(ckpt_path)
    del ckpt["config"]["amp"]  # as written before an option existed: its default applies
    write_checkpoint(ckpt_path, ckpt)
    monkeypatch.chdir(tmp_path)  # ...continued from elsewhere, its features moved
    (tmp_path / "a" / "feats").rename(tmp_path / "moved")
    same = replace(cfg, out=str(tmp_path / "a" / "run"), features="moved", log_every=1)
    assert train(same) == {"step": 3, "done": True}
    with pytest.raises(GeoconceptError, match=r"other --max-steps 5 \(was 3\), --lr 0.001 \("):
        train(replace(same, max_steps=5, lr=1e-3), resume=True)
    with pytest.raises(GeoconceptError, match=r"other --concepts none;"):
        train(replace(same, concepts=None))


def test_resume_refuses_features_or_concepts_that_changed(world, tmp_path):
    from geoconcept_cli.data.features import save_features
    from geoconcept_cli.model.concept_embeddings import (
        load_concept_embeddings,
        save_concept_embeddings,
    )

    data, feats = load_features(world["train"]), tmp_path / "feats"
    meta = {k: data.meta[k] for k in ("clip_model", "clip_pretrained")}
    save_features(feats, data.ids, data.features, data.latlon, **meta)
    cfg = _cfg(world, tmp_path / "run", features=str(feats), max_steps=3)
    train(cfg)
    shutil.rmtree(feats)
    save_features(feats, data.ids[:-32], data.features[:-32], data.latlon[:-32], **meta)
    with pytest.raises(GeoconceptError, match=r"changed since .* \(384 rows then, 352 now\)"):
        train(cfg, resume=True)
    shutil.rmtree(feats)
    save_features(feats, data.ids[::-1], data.features, data.latlon, **meta)  # same count
    with pytest.raises(GeoconceptError, match=r"\(other image ids\)"):
        train(cfg, resume=True)
    shutil.rmtree(feats)
    save_features(feats, data.ids, data.features, data.latlon, **meta)
    basis = load_concept_embeddings(world["concepts"])
    other = save_concept_embeddings(tmp_path / "other", basis.embeddings.roll(1, 0), basis.meta)
    with pytest.raises(GeoconceptError, match="is not the concept basis"):
        train(replace(cfg, concepts=str(other)), resume=True)
    assert train(cfg, resume=True) == {"step": 3, "done": True}


def _same_step(step_of_rank: list, out_dir: str) -> None:
    from geoconcept_cli.runtime.distributed import init_distributed, same_on_all_ranks

    info = init_distributed(False)
    same = same_on_all_ranks(step_of_rank[info.rank], info)
    Path(out_dir, f"rank{info.rank}").write_text(str(same))


@pytest.mark.distributed
def test_ranks_agree_whether_they_resume_from_one_step(tmp_path):
    cases = [[6, 6], [6, 0]]
    for i in range(len(cases)):
        (tmp_path / str(i)).mkdir()
    launch(_same_steps, (cases, str(tmp_path)), nproc=2)  # one launch: processes cost most
    for i, steps in enumerate(cases):
        want = str(steps[0] == steps[1])
        assert [(tmp_path / str(i) / f"rank{r}").read_text() for r in (0, 1)] == [want, want]


def _same_steps(cases: list[list[int]], out_dir: str) -> None:
    """``_same_step`` of each case in turn, into the case's folder."""
    for i, steps in enumerate(cases):
        _same_step(steps, str(Path(out_dir, str(i))))


def _step_failing_on(rank: int, out_dir: str) -> None:
    """A step that raises on ``rank`` (-1: none); each rank writes what it got."""
    from geoconcept_cli.runtime.distributed import all_or_none, init_distributed

    info = init_distributed(False)
    try:
        with all_or_none(info, "writing a part"):
            if info.rank == rank:
                raise OSError("No space left on device")
        got = "ok"
    except Exception as exc:  # the launcher stops every rank at the first that raises
        got = f"{type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{info.rank}").write_text(got)


def _steps_failing_on(ranks: list[int], out_dir: str) -> None:
    """``_step_failing_on`` each rank in turn (-1 first: none), into a folder each."""
    for rank in ranks:
        _step_failing_on(rank, str(Path(out_dir, str(rank))))


@pytest.mark.distributed
def test_a_step_that_fails_on_one_rank_fails_on_every_rank(tmp_path):
    failing = [-1, 0, 1]
    for rank in failing:
        (tmp_path / str(rank)).mkdir()
    launch(_steps_failing_on, (failing, str(tmp_path)), nproc=2)  # one launch for the three
    for rank in failing:
        want = ["ok", "ok"]
        for r in (0, 1):
            if rank >= 0:
                want[r] = ("OSError: No space left on device" if r == rank else
                           "GeoconceptError: another rank failed while writing a part; its "
                           "error is in its output")  # fmt: skip
        assert [(tmp_path / str(rank) / f"rank{r}").read_text() for r in (0, 1)] == want


@pytest.mark.distributed
def test_slurm_ranks_all_stop_when_rank_0_cannot_log(world, tmp_path):
    """Rank 0 cannot append to metrics.jsonl (a folder holds its name) at the first log step;
    rank 1 stops too, in one line, where before it got a gloo traceback in the next step's
    all-reduce (on NCCL: a wait until the group's timeout)."""
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    (code0, err0), (code1, err1) = srun([
        "train", str(world["train"]), "--out", str(out), "--concepts", str(world["concepts"]),
        "--epochs", "1", "--batch-size", "32", "--queue-size", "32", "--warmup-steps", "2",
        "--log-every", "2",
    ])  # fmt: skip
    *progress, last = err0.strip().splitlines()  # rank 0's progress began before the log step
    assert code0 == 2 and "metrics.jsonl" in last and last.startswith("error: "), err0
    assert all(line.startswith("training: ") for line in progress), err0
    assert code1 == 2 and err1.strip() == ("error: another rank failed while logging metrics; "
                                           "its error is in its output"), err1[-3000:]  # fmt: skip


def _one_step(cfg_dicts: list[dict], out_files: list[str]) -> None:
    """Loss and gradients of one step of each config on this rank (run under the launcher or
    alone): several configs share one launch, whose processes cost more than the steps."""
    from geoconcept_cli.model.concept_embeddings import load_concept_embeddings
    from geoconcept_cli.model.concept_head import build_head
    from geoconcept_cli.runtime.distributed import init_distributed, mean_across_ranks
    from geoconcept_cli.training.loop import prepare, step_loss

    info = init_distributed(False)
    for cfg_dict, out_file in zip(cfg_dicts, out_files, strict=True):
        cfg = TrainConfig(**cfg_dict)
        torch.manual_seed(0)
        head = build_head(load_concept_embeddings(cfg.concepts).embeddings)
        with torch.no_grad():
            head.image_proj.weight.normal_(0, 0.05)  # non-zero so every branch carries gradient
        model, _, _ = prepare(head, cfg, info)
        data = load_features(cfg.features)
        b = cfg.batch_size // info.world_size
        mine = slice(info.rank * b, (info.rank + 1) * b)
        queue = data.latlon[-16:]
        loss, _ = step_loss(model, head, data.features[mine], data.latlon[mine], queue, cfg, info)
        loss.backward()
        if info.rank == 0:
            grads = {n: p.grad for n, p in head.named_parameters() if p.grad is not None}
            torch.save({"loss": mean_across_ranks(loss.item(), info), "grads": grads}, out_file)
        else:
            mean_across_ranks(loss.item(), info)


@pytest.mark.distributed
def test_ddp_two_gloo_processes_equal_one(world, tmp_path):
    """Both divergences: two gloo processes give one process's loss and gradients."""
    cfgs = [_cfg(world, tmp_path, divergence=d).__dict__ for d in ("mmd", "mean")]
    ones = [str(tmp_path / f"one-{i}.pt") for i in range(2)]
    twos = [str(tmp_path / f"two-{i}.pt") for i in range(2)]
    _one_step(cfgs, ones)
    launch(_one_step, (cfgs, twos), nproc=2)
    for one, two in zip(ones, twos, strict=True):
        a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 5
        for k, ga in a["grads"].items():  # equal up to float32 summation order
            assert (ga - b["grads"][k]).abs().max() <= 1e-5 * ga.abs().max(), k


@pytest.mark.distributed
def test_cli_trains_with_two_cpu_processes(world, tmp_path, capfd):
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app

    out = tmp_path / "ddp"
    with _listening() as taken:  # one node picks a free port: a busy --master-port is no matter
        res = CliRunner().invoke(app, [
            "train", str(world["train"]), "--out", str(out), "--concepts", str(world["concepts"]),
            "--max-steps", "3", "--batch-size", "32", "--queue-size", "32", "--nproc", "2",
            "--master-port", str(taken),
        ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["step"] == 3
    assert read_checkpoint(out / "checkpoint.safetensors")["step"] == 3
    # not a terminal (as in a SLURM log): rank 0 alone logs plain progress lines (the worker
    # processes write to the inherited stderr, not to the runner's)
    logged = capfd.readouterr().err
    assert len(re.findall(r"^training: 3/3 \(100%\), loss [\d.]+ [\d,]+ samples/s$", logged,
                          re.M)) == 1, logged  # fmt: skip


@pytest.mark.distributed
def test_two_nodes_train_as_one_process(world, tmp_path):
    """Two `geoconcept train --nnodes 2` processes (one per node rank) meet over TCP and
    take the same steps as one process on the same global batch."""
    out = tmp_path / "nodes"
    args = [sys.executable, "-m", "geoconcept_cli", "train", str(world["train"]), "--out",
            str(out), "--concepts", str(world["concepts"]), "--max-steps", "4",
            "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "3", "--queue-size", "32",
            "--log-every", "1", "--nnodes", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port())]  # fmt: skip
    nodes = [subprocess.Popen([*args, "--node-rank", str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # fmt: skip
    try:
        printed = []
        for node in nodes:
            text, err = node.communicate(timeout=300)
            assert node.returncode == 0, err[-2000:]
            printed.append(text)
        assert json.loads(printed[0])["step"] == 4 and printed[1].startswith("node 1: done")
    finally:
        for node in nodes:
            node.kill()
    ref = _cfg(world, tmp_path / "ref", max_steps=4, epochs=10, log_every=1)
    train(ref)
    losses = [[json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (out, tmp_path / "ref")]  # fmt: skip
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    a = read_checkpoint(ref.checkpoint_path())["model"]
    b = read_checkpoint(out / "checkpoint.safetensors")["model"]
    for k in a:
        # Adam's first steps move a weight by about lr whatever its gradient's size, so a ~0
        # gradient whose sign another summation order flips can end up to ~lr apart (1.6e-4
        # seen here): every weight but a rare few must agree
        diff = (a[k] - b[k]).abs()
        far = (diff > 1e-5).float().mean()
        assert diff.mean() < 1e-7 and far < 1e-4, (k, diff.mean(), far)


@contextlib.contextmanager
def _listening():
    """A port some other program holds for the duration of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _lone_nodes(world, tmp_path, nodes: list[tuple[int, int]]) -> list[tuple[int, str, str]]:
    """One node of a two-node training for each (node rank, master port), all at once (they
    mostly wait); (exit code, last stderr line, stderr) of each."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "geoconcept_cli", "train", str(world["train"]), "--out",
         str(tmp_path / f"alone-{i}"), "--concepts", str(world["concepts"]), "--batch-size",
         "32", "--nnodes", "2", "--node-rank", str(rank), "--master-port", str(port),
         "--rdzv-timeout", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for i, (rank, port) in enumerate(nodes)]  # fmt: skip
    done = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        done.append((proc.returncode, (stderr.strip().splitlines() or [""])[-1], stderr))
    return done


@pytest.mark.distributed
def test_a_node_left_alone_or_on_a_busy_port_stops_with_one_line(world, tmp_path):
    """Node 0 waits for the others; node 1 finds nobody listening: both stop after
    --rdzv-timeout with a one-line error, not a C++ stack after torchrun's 900 s. A master
    port in use is named."""
    with _listening() as taken:
        alone = _lone_nodes(world, tmp_path, [(0, free_port()), (1, free_port()), (0, taken)])
    for node_rank, (code, last, stderr) in enumerate(alone[:2]):
        assert code == 2 and last.startswith(f"error: node {node_rank} of 2: the nodes did not "
                                             "all meet"), stderr[-2000:]  # fmt: skip
        assert "within 3 s" in last and "Traceback" not in stderr
    code, last, stderr = alone[2]
    assert code == 2 and last.startswith(f"error: port {taken} is in use"), stderr[-2000:]


def test_distinfo_defaults():
    assert DistInfo().is_main and DistInfo().world_size == 1


@pytest.mark.parametrize(
    ("env", "main"),
    [({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False),
     ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, True),
     ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, False),  # before init_distributed adopts it
     ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True)],
)  # fmt: skip
def test_the_main_process_is_known_under_torchrun_and_slurm(env, main, monkeypatch):
    from geoconcept_cli.runtime.distributed import is_main_process

    for var in ("RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert is_main_process() is main


@pytest.mark.parametrize(
    ("change", "message"),
    [({"sigma": 0.0}, "--sigma"), ({"batch_size": 0}, "--batch-size"), ({"lr": -1.0}, "--lr"),
     ({"log_every": 0}, "--log-every"), ({"epochs": 0}, "nothing to train"),
     ({"divergence": "kl"}, "--divergence"), ({"lambda_div": -1.0}, "--lambda"),
     ({"warmup_steps": -1}, "--warmup-steps"), ({"save_every": 0}, "--save-every")],
)  # fmt: skip
def test_bad_options_are_one_line_errors(world, tmp_path, change, message):
    with pytest.raises(GeoconceptError, match=message):
        train(_cfg(world, tmp_path / "bad", **change))
    assert not (tmp_path / "bad" / "checkpoint.safetensors").exists()


def test_cli_process_counts_and_out_paths_are_one_line_errors(world, tmp_path):
    from typer.testing import CliRunner

    from geoconcept_cli.cli.app import app

    (tmp_path / "file").write_text("")
    base = ["train", str(world["train"]), "--concepts", "none", "--batch-size", "32"]
    cases = [(["--out", str(tmp_path / "r"), "--nproc", "0"], "--nproc >= 1"),
             (["--out", str(tmp_path / "file")], "is a file; give a run folder")]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path / "r"), "--gpus", "1"], "has 0 CUDA GPUs"))
    for extra, message in cases:
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and res.stderr.startswith("error:"), res.output
        assert message in res.stderr


def test_a_warmup_longer_than_the_run_is_warned_about(world, tmp_path):
    with pytest.warns(UserWarning, match=r"--warmup-steps 100 is longer than the run \(2 steps"):
        train(_cfg(world, tmp_path / "w", max_steps=2, warmup_steps=100))


def test_max_steps_beyond_the_epochs_is_warned_about(world, tmp_path):
    with pytest.warns(UserWarning, match=r"--max-steps 400 is more than --epochs 1 give \(.* the "
                                         r"run stops at \d+; raise --epochs"):  # fmt: skip
        check_run(_cfg(world, tmp_path / "m", epochs=1, max_steps=400), resume=False)


def test_max_steps_caps_the_epochs(world, tmp_path):
    last = train(_cfg(world, tmp_path / "cap", epochs=1, max_steps=50))
    assert last["step"] == 8 * 48 // 32  # one epoch, fewer than --max-steps


def test_concepts_of_another_clip_model_are_refused(world, tmp_path):
    other = make_world(tmp_path / "other", n_regions=2, per_region=4, k=5, clip_model="ViT-B-32")
    with pytest.raises(GeoconceptError, match="ViT-B-32"):
        train(_cfg(world, tmp_path / "mix", concepts=str(other["concepts"])))


@pytest.mark.e2e
def test_ctrl_c_says_how_to_continue(world, tmp_path):
    out = tmp_path / "long"
    proc = subprocess.Popen([sys.executable, "-m", "geoconcept_cli", "train", str(world["train"]),
                             "--out", str(out), "--concepts", "none", "--batch-size", "32",
                             "--epochs", "100000", "--log-every", "1"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # training has started: the signal reaches the training loop
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted; rerun the same command with --resume" in stderr
    assert "Traceback" not in stderr


def test_half_written_metrics_line_does_not_break_resume(world, tmp_path):
    cfg = _cfg(world, tmp_path / "m", max_steps=6, save_every=3)

    def crash_at_5(step, total, last):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, progress=crash_at_5)
    with (tmp_path / "m" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    assert train(cfg, resume=True)["step"] == 6


def test_resume_without_a_checkpoint_says_it_starts_anew(world, tmp_path):
    cfg = _cfg(world, tmp_path / "fresh", max_steps=1, warmup_steps=1)
    with pytest.warns(UserWarning, match="--resume: no checkpoint in .* starting a new run"):
        assert train(cfg, resume=True)["step"] == 1
