"""`pcclip index`: a directory or a JSONL manifest into a collection, through the service or in process."""

from __future__ import annotations

import json
import shutil

import pytest

from service.index_command import ServiceIndexer, read_entries, run_index
from tests.service.conftest import service_client


@pytest.fixture
def photo_dir(tmp_path, cub_photos):
    root = tmp_path / "photos"
    for p in cub_photos[:4]:
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / p.parent.name / p.name)
    (root / "broken").mkdir()
    (root / "broken" / "bad.jpg").write_bytes(b"this is not a jpeg")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def _indexer(client, name):
    indexer = ServiceIndexer("http://testserver", name, None, timeout=60)
    indexer.client = client  # the TestClient is an httpx.Client
    return indexer


def test_directory_through_the_service_reports_failures_and_resumes(encoder, redis_url, photo_dir, cub_photos):
    entries, bad_lines = read_entries(photo_dir)
    assert len(entries) == 5 and not bad_lines
    with service_client(encoder, redis_url) as client:
        added, skipped, failures = run_index(_indexer(client, "dir"), entries, batch_size=2, concurrency=2, resume=True)
        assert (added, skipped) == (4, 0)
        assert [f.id for f in failures] == ["broken/bad.jpg"] and "422" in failures[0].error
        assert client.get("/v1/collections/dir/count").json()["count"] == 4
        first = f"{cub_photos[0].parent.name}/{cub_photos[0].name}"
        assert client.get(f"/v1/collections/dir/items/{first}").json()["metadata"] == {"folder": cub_photos[0].parent.name}
        # a second run skips what is there and only retries the failure
        calls = encoder.calls["image"]
        added, skipped, failures = run_index(_indexer(client, "dir"), entries, batch_size=2, concurrency=2, resume=True)
        assert (added, skipped, len(failures)) == (0, 4, 1) and encoder.calls["image"] - calls <= 1


def test_manifest_with_ids_metadata_and_bad_lines(encoder, redis_url, photo_dir, tmp_path, cub_photos):
    manifest = tmp_path / "photos" / "manifest.jsonl"
    rows = [json.dumps({"path": f"{p.parent.name}/{p.name}", "id": f"bird-{i}", "metadata": {"i": i}}) for i, p in enumerate(cub_photos[:3])]
    rows += ["{not json", json.dumps({"id": "no-path"}), json.dumps({"path": "missing/file.jpg"})]
    manifest.write_text("\n".join(rows) + "\n")
    entries, bad_lines = read_entries(manifest)
    assert [e.id for e in entries] == ["bird-0", "bird-1", "bird-2", "missing/file.jpg"]
    assert [f.id for f in bad_lines] == ["line 4", "line 5"]
    with service_client(encoder, redis_url) as client:
        added, _, failures = run_index(_indexer(client, "man"), entries, batch_size=8, concurrency=1, resume=True)
        assert added == 3 and [f.id for f in failures] == ["missing/file.jpg"] and "cannot read" in failures[0].error
        assert client.get("/v1/collections/man/items/bird-1").json()["metadata"] == {"i": 1}


def test_in_process_index_is_seen_by_the_service(encoder, redis_url, photo_dir, tmp_path, monkeypatch, capsys):
    from pcclip.cli import main

    monkeypatch.setenv("PCCLIP_REDIS_URL", redis_url)
    failures = tmp_path / "failures.jsonl"
    code = main(["index", "local", str(photo_dir), "--in-process", "--model", "pcclip-mini",
                 "--batch-size", "3", "--failures", str(failures)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["added"] == 4 and summary["failed"] == 1
    assert json.loads(failures.read_text())["id"] == "broken/bad.jpg"
    with service_client(encoder, redis_url) as client:
        assert client.get("/v1/collections/local/count").json()["count"] == 4
        ranked = client.post("/v1/collections/local/rank", json={"attribute": "a larger bird"}).json()["results"]
        assert len(ranked) == 4


def test_index_keeps_as_many_requests_in_flight_as_the_service_runs_image_calls():
    """`pcclip index`'s default in-flight requests match the service's default image workers, so
    the tower does not idle between adds (docs/collections.md: 0.898x at 2 in flight, 0.932x at 3)."""
    import argparse

    from service.index_command import register
    from service.settings import Settings

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["index", "c", "dir"])
    assert args.concurrency == Settings.model_fields["image_workers"].default
