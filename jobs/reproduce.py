"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/reproduce.py ARGS`.

ARGS are those of `mgr reproduce` (see `mgr reproduce --help`); inside a Ray job the command
joins the job's cluster (RAY_ADDRESS is set by Ray).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

from mgr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
