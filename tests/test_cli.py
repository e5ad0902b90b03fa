import subprocess
import sys


def test_pcclip_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "pcclip", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "embed" in proc.stdout and "info" in proc.stdout


def test_pcclip_embed_prints_similarities(data_dir):
    image = data_dir / "coco-mini" / "val2017" / "000000022892.jpg"
    proc = subprocess.run(
        [sys.executable, "-m", "pcclip", "embed", "--image", str(image), "--text", "a photo of a cat", "--text", "a rocket"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.strip().startswith(("+", "-"))]
    assert len(lines) == 2
    scores = [float(l.split()[0]) for l in lines]
    assert scores[0] >= scores[1] and all(-1.0 <= s <= 1.0 for s in scores)


def test_an_unreachable_hub_model_is_one_clear_error(tmp_path):
    import os

    # nothing listens on 127.0.0.1:443, so the hub is unreachable whatever this machine's network
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "PCCLIP_HUB_PROBE_TIMEOUT": "1"}
    result = subprocess.run([sys.executable, "-m", "pcclip", "info", "--model", "ViT-B-32:openai"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("pcclip info: error: cannot download pretrained weights for 'ViT-B-32:openai'")
    assert "create_model('ViT-B-32', pretrained='openai')" in lines[0] and "<tag>" not in lines[0]
