"""`python -m bench`: run every benchmark (bench/run_all.sh)."""

import subprocess
import sys
from pathlib import Path

sys.exit(subprocess.call(["bash", str(Path(__file__).with_name("run_all.sh"))]))
