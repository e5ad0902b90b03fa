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
