import sys

from pcclip.cli import main

sys.exit(main())
