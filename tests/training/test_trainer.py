"""The trainer on the tiny random open_clip arch and on pcclip-mini, with tiny budgets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoints import read_checkpoint
from models.loading import load_model
from training.trainer import DistInfo, TrainConfig, resolve_device, train, warmup_cosine

REPO = Path(__file__).resolve().parents[2]
TINY = "pcclip-tiny-vit"


def _cfg(tmp_path, pairs, name="run", **kw) -> TrainConfig:
    base = dict(model=TINY, out=str(tmp_path / name), pairs=[str(pairs)] if pairs else [], cache_dir=str(tmp_path / "cache"),
                epochs=2, batch_size=8, lr=1e-3, warmup_steps=2, seed=3, exclude_classes=None, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _state(path):
    return read_checkpoint(path)["state_dict"]


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)


@pytest.mark.parametrize("requested", ["cuda", "auto"])
@pytest.mark.parametrize("dist_info", [DistInfo(), DistInfo(rank=3, world_size=4, local_rank=1)],
                         ids=["one process", "rank 3 of 4"])
def test_resolve_device_gives_cuda_an_index_for_one_and_several_processes(monkeypatch, requested, dist_info):
    """torch.cuda.set_device refuses a bare `cuda`; this machine has no GPU, so torch's own index check stands in."""
    from torch.cuda._utils import _get_device_index

    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: selected.append(_get_device_index(device)))
    device = resolve_device(requested, dist_info)
    assert device == torch.device("cuda", dist_info.local_rank) and selected == [dist_info.local_rank]
    assert resolve_device("cuda:2", dist_info) == torch.device("cuda", 2)  # an explicit index is kept
    assert resolve_device("cpu", dist_info) == torch.device("cpu")


def test_pc_clip_run_trains_only_the_text_tower_and_checkpoints_load(tmp_path, tiny_pairs):
    summary = train(_cfg(tmp_path, tiny_pairs, save_epochs=True))
    run = tmp_path / "run"
    assert summary["steps"] == 10  # 40 pairs / 8 = 5 steps x 2 epochs
    # a finished run: the final weights once, the epoch checkpoints asked for, no resume point left
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "epoch-001.safetensors", "epoch-002.safetensors",
                                                     "final.safetensors", "metrics.jsonl", "summary.json"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 11))
    assert all(r["pc_loss"] > 0 and r["clip_loss"] is None for r in records if r["event"] == "step")
    # the text tower changed, the image tower and the (fixed) logit scale did not
    base = load_model(TINY).model.state_dict()  # same random init: open_clip seeds nothing, so compare via the checkpoint's base
    final = _state(run / "final.safetensors")
    first = _state(run / "epoch-001.safetensors")
    changed = {k for k in final if not torch.equal(final[k], first[k])}
    # the pc-clip defaults train the text transformer's layers only (as the official code)
    assert changed and all(k.startswith("transformer.resblocks.") for k in changed)
    layers = {k: v for k, v in final.items() if k.startswith("transformer.resblocks.")}
    assert summary["trainable_tensors"] == len(layers)
    assert summary["trainable_parameters"] == sum(v.numel() for v in layers.values()) > 10 * len(layers)
    assert final["logit_scale"].item() == 0.0  # temperature 1
    assert set(base) == set(final)
    # load_model(checkpoint) rebuilds the model with exactly these weights
    loaded = load_model(str(run / "final.safetensors"))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, final[k]), k
    assert loaded.base_spec == TINY
    # the model it started from: the same random init, rebuilt from what the checkpoint records
    # (a plain load of the base spec draws another random model)
    from models.checkpoints import state_fingerprint
    from models.loading import load_starting_model

    start = load_starting_model(loaded)
    assert state_fingerprint(start.model) == loaded.info["start_fingerprint"] != state_fingerprint(load_model(TINY).model)
    assert torch.equal(start.model.state_dict()["visual.proj"], final["visual.proj"])  # the frozen image tower


def test_max_steps_inside_an_epoch_writes_no_epoch_checkpoint(tmp_path, tiny_pairs):
    summary = train(_cfg(tmp_path, tiny_pairs, "short", max_steps=3, save_epochs=True))  # 5 steps per epoch
    run = tmp_path / "short"
    assert summary["steps"] == 3 and summary["total_steps"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "final.safetensors", "metrics.jsonl", "summary.json"]
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events == ["step"] * 3 + ["stopped"]


def test_rerun_reuses_the_image_cache(tmp_path, tiny_pairs, caplog):
    train(_cfg(tmp_path, tiny_pairs, "a", epochs=1, seed=1))
    cache_files = list((tmp_path / "cache").rglob("features.pt"))
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns
    train(_cfg(tmp_path, tiny_pairs, "b", epochs=1, seed=1))
    assert cache_files[0].stat().st_mtime_ns == mtime  # nothing was recomputed or rewritten
    key = "transformer.resblocks.1.attn.in_proj_weight"
    assert torch.equal(_state(tmp_path / "a" / "final.safetensors")[key], _state(tmp_path / "b" / "final.safetensors")[key])


def test_wise_ft_interpolates_saved_weights(tmp_path, tiny_pairs):
    train(_cfg(tmp_path, tiny_pairs, "full", epochs=1, seed=5))
    train(_cfg(tmp_path, tiny_pairs, "half", epochs=1, seed=5, wise_alpha=0.25))
    full, half = _state(tmp_path / "full" / "final.safetensors"), _state(tmp_path / "half" / "final.safetensors")
    torch.manual_seed(5)  # the trainer seeds before it builds the (random) base model
    base = load_model(TINY).model.state_dict()
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.equal(full[key], base[key])
    torch.testing.assert_close(half[key], 0.25 * full[key] + 0.75 * base[key])
    assert torch.equal(half["visual.proj"], base["visual.proj"])


def test_base_preset_trains_heads_and_logit_scale_on_captions(tmp_path, tiny_captions):
    from training.train_commands import build_config, register
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "base", "--model", TINY, "--captions", str(tiny_captions),
                              "--out", str(tmp_path / "base"), "--cache-dir", str(tmp_path / "cache"),
                              "--batch-size", "6", "--epochs", "2", "--exclude-classes", "none", "--device", "cpu"])
    cfg = build_config(args)
    assert cfg.train == "text-head,image-head,logit-scale" and cfg.lr == 1e-3
    torch.manual_seed(cfg.seed)
    base = load_model(TINY).model.state_dict()
    train(cfg)
    final = _state(tmp_path / "base" / "final.safetensors")
    changed = {k for k in final if not torch.equal(final[k], base[k])}
    assert changed == {"text_projection", "visual.proj", "logit_scale"}
    records = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clip_loss"] is not None and r["pc_loss"] is None for r in records if r["event"] == "step")


def test_pcclip_mini_base_training_caches_trunk_features(tmp_path, tiny_captions):
    cfg = _cfg(tmp_path, None, "mini", model="pcclip-mini:untrained", captions=[str(tiny_captions)],
               train="text-head,image-head,logit-scale", clip_weight=1.0, epochs=1, batch_size=6, max_steps=2)
    train(cfg)
    assert len(list((tmp_path / "cache").glob("trunk-*/features.pt"))) == 1
    blob = torch.load(next((tmp_path / "cache").glob("trunk-*/features.pt")), weights_only=True)
    assert blob["features"].shape == (18, 1280)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "mini" / "weights.safetensors"))
    # the image head is an MLP (models/model_configs/pcclip-mini.json) plus the concept embeddings, the text head linear
    assert set(weights) == {"logit_scale", "text.head.weight", "visual.head.0.weight", "visual.head.0.bias",
                            "visual.head.3.weight", "visual.head.3.bias", "visual.concepts.embeddings"}
    loaded = load_model(f"pcclip-mini:{tmp_path / 'mini' / 'weights.safetensors'}")
    assert torch.equal(loaded.model.visual.head[0].weight, weights["visual.head.0.weight"])


def _train_cmd(out: Path, pairs: Path, cache: Path, extra=()) -> list[str]:
    return [sys.executable, "-m", "pcclip", "train", "--model", TINY, "--pairs", str(pairs), "--out", str(out),
            "--cache-dir", str(cache), "--epochs", "3", "--batch-size", "4", "--lr", "1e-3", "--seed", "7",
            "--save-every", "1", "--exclude-classes", "none", "--device", "cpu", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_resume_after_kill_gives_the_same_weights(tmp_path, tiny_pairs):
    cache = tmp_path / "cache"
    straight = subprocess.run(_train_cmd(tmp_path / "straight", tiny_pairs, cache), env=_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "%|" not in straight.stderr  # no progress bars when stderr is not a terminal (tqdm disable=None)
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed_dir, tiny_pairs, cache), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 12:  # well into the second epoch
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(killed_dir / "last.pt", weights_only=False)
    assert 0 < state["step"] < 30
    assert not (killed_dir / "final.safetensors").exists()
    resumed = subprocess.run(_train_cmd(killed_dir, tiny_pairs, cache, ["--resume"]), env=_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch" in resumed.stderr
    a, b = _state(tmp_path / "straight" / "final.safetensors"), _state(killed_dir / "final.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"event": "step"' in line]
    assert steps == list(range(1, 31))  # the log has each step once, as if never interrupted
    assert not (killed_dir / "last.pt").exists()  # finished: the resume point is gone, and so is resuming
    again = subprocess.run(_train_cmd(killed_dir, tiny_pairs, cache, ["--resume"]), env=_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "has finished" in again.stderr, again.stderr[-2000:]


def test_torchrun_two_processes_gloo(tmp_path, tiny_pairs):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pcclip", "train", "--model", TINY, "--pairs", str(tiny_pairs), "--out", str(out),
           "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
           "--exclude-classes", "none", "--device", "cpu", "--save-epochs"]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 10  # 40 pairs -> 20 per rank -> 5 batches of 4 per epoch
    fingerprints = summary["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]  # both ranks hold the same weights
    for name in ("epoch-001.safetensors", "epoch-002.safetensors", "final.safetensors"):
        assert read_checkpoint(out / name)["extra"]["written_by_rank"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "epoch-001.safetensors", "epoch-002.safetensors", "final.safetensors",
                                                     "metrics.jsonl", "summary.json"]
    from models.checkpoints import state_fingerprint

    assert state_fingerprint(load_model(str(out / "final.safetensors")).model) == fingerprints[0]


def test_caption_loss_mixed_in_and_last_text_layers(tmp_path, tiny_pairs, tiny_captions):
    cfg = _cfg(tmp_path, tiny_pairs, "mix", captions=[str(tiny_captions)], clip_weight=0.5, train="text-last:1",
               epochs=1, caption_batch_size=6, temperature=0.05)
    torch.manual_seed(cfg.seed)
    base = load_model(TINY).model.state_dict()
    train(cfg)
    final = _state(tmp_path / "mix" / "final.safetensors")
    changed = {k for k in final if not torch.equal(final[k], base[k])}
    assert changed and all(k.startswith("transformer.resblocks.1.") for k in changed - {"logit_scale"})
    assert final["logit_scale"].item() == pytest.approx(torch.log(torch.tensor(20.0)).item())  # fixed at 1/T
    steps = [json.loads(line) for line in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    steps = [r for r in steps if r["event"] == "step"]
    assert len(steps) == 5
    for r in steps:
        assert r["loss"] == pytest.approx(r["pc_loss"] + 0.5 * r["clip_loss"], rel=1e-5)
        assert r["logit_scale"] == pytest.approx(20.0, rel=1e-5)


def test_bad_input_is_a_clear_error(tmp_path, tiny_pairs, capsys):
    from pcclip.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_a": "cub100/images/x.jpg", "text": "t", "writer": "attributes"}\n')
    common = ["train", "--model", TINY, "--out", str(tmp_path / "r"), "--exclude-classes", "none", "--cache-dir", str(tmp_path / "c")]
    assert main([*common, "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "image_b" in err
    assert main([*common, "--pairs", str(tiny_pairs), "--batch-size", "1000"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert main([*common, "--pairs", str(tiny_pairs), "--train", "wings"]) == 2
    assert "unknown part" in capsys.readouterr().err
    assert main([*common, "--pairs", str(tiny_pairs), "--probe-weight", "1"]) == 2  # records without facts
    assert "attribute-writer pairs" in capsys.readouterr().err


def test_attribute_direction_loss_is_mixed_in_and_falls(tmp_path, tiny_attribute_pairs):
    """Attribute-writer pairs of a few real photos: the run logs loss = pc + w * probe, and the text
    embeddings move towards their facts' directions."""
    cfg = _cfg(tmp_path, tiny_attribute_pairs, "probe", model="pcclip-mini:base", probe_weight=5.0, epochs=4,
               temperature=0.05, lr=1e-3, train="text-last:1")
    train(cfg)
    steps = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "step"]
    assert len(steps) == 24
    for r in steps:
        assert r["loss"] == pytest.approx(r["pc_loss"] + 5.0 * r["probe_loss"], rel=1e-5)
    first = sum(r["probe_loss"] for r in steps[:6]) / 6
    last = sum(r["probe_loss"] for r in steps[-6:]) / 6
    assert last < first - 0.05, (first, last)
