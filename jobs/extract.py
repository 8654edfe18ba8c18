"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/extract.py INPUT OUTPUT ...``."""

import sys

from mgr.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
