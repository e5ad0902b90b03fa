"""`pcclip pairs` end to end on small n: files, determinism, reserved classes, the llm writer."""

import json
import subprocess
import sys

from tests.training.pairs.chat_server import ChatServer
from training.data import CubDataset, load_class_split
from training.pairs.base import read_jsonl


def pcclip(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "pcclip", "pairs", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_attributes_cli_is_seeded_and_keeps_reserved_out(tmp_path, data_dir):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.jsonl"
        proc = pcclip("--writer", "attributes", "--data", str(data_dir), "--n", "300", "--seed",
                      str(seed), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert f"wrote 300 pairs to {out}" in proc.stdout and "exclude reserved" in proc.stdout
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    records = read_jsonl(tmp_path / "a.jsonl")
    reserved = set(load_class_split())
    train = {im.path for im in CubDataset(data_dir).split("train")}
    assert len(records) == 300
    assert all(r.class_a not in reserved and r.class_b not in reserved for r in records)
    assert all(r.image_a in train and r.image_b in train for r in records)
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert list(first) == ["image_a", "image_b", "text", "writer", "class_a", "class_b",
                           "caption_a", "caption_b", "source"]


def test_evaluation_pairs_only_reserved_test_photos(tmp_path, data_dir):
    out = tmp_path / "eval.jsonl"
    proc = pcclip("--split", "test", "--only-reserved", "--data", str(data_dir), "--n", "100",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    test = {im.path for im in CubDataset(data_dir).split("test")}
    records = read_jsonl(out)
    assert all(r.class_a in load_class_split() and r.image_a in test for r in records)


def test_llm_cli_against_local_server(tmp_path, data_dir):
    import os

    env = {**os.environ, "PCCLIP_LLM_API_KEY": "sk-local"}
    with ChatServer(api_key="sk-local", fail_first=2) as server:
        args = ("--writer", "llm", "--dataset", "coco", "--data", str(data_dir), "--n", "8",
                "--llm-base-url", server.base_url, "--llm-model", "m", "--llm-cache",
                str(tmp_path / "cache.sqlite"))
        first = pcclip(*args, "--out", str(tmp_path / "a.jsonl"), env=env)
        sent = server.requests
        second = pcclip(*args, "--out", str(tmp_path / "b.jsonl"), env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "2 retries" in first.stdout and server.requests == sent
    assert "0 requests" in second.stdout
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len(read_jsonl(tmp_path / "a.jsonl")) == 8


def test_bad_arguments_fail_clearly(tmp_path):
    proc = pcclip("--writer", "llm", "--out", str(tmp_path / "x.jsonl"), "--n", "2",
                  env={"PATH": "/usr/bin", "PCCLIP_LLM_BASE_URL": ""})
    assert proc.returncode != 0 and "not configured" in proc.stderr
    proc = pcclip("--dataset", "coco", "--out", str(tmp_path / "x.jsonl"))
    assert proc.returncode != 0 and "needs --dataset cub" in proc.stderr
