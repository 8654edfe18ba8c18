"""``mgr report LABELS [--out DIR]``: the labeling report of a labels OUTPUT, written anywhere."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write the labeling report (index.html, charts, review.csv) of a labels OUTPUT",
        description="Summarise a labels OUTPUT of mgr label in a self-contained HTML page with PNG charts "
        "(genres by track count and by hours, confidence per genre, the share of 'unknown', errors by "
        "cause with examples, throughput) and review.csv (the least confident tracks, for a person to "
        "check). Computed from per-block aggregates (Ray Data on a large OUTPUT), never every row at once. "
        "Every finished mgr label run writes the same report into OUTPUT/_report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("labels", metavar="LABELS", help="labels OUTPUT of mgr label (folder or s3:// prefix)")
    p.add_argument("--out", default=None, help="folder for the report (default: LABELS/_report)")
    p.add_argument("--review", type=int, default=200, help="least confident tracks listed in review.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object (with `index`)")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.errors import ConfigError
    from mgr.pipelines.report import write_labels_report

    if args.review < 1:
        raise ConfigError(f"--review must be at least 1, got {args.review}")
    res = write_labels_report(args.labels, out=args.out, top_n=args.review, endpoint_url=args.endpoint_url,
                              address=args.address, num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print(f"mgr report: {res['index']} ({res['tracks']:,} tracks, {res['errors']:,} errors, "
              f"{res['unknown']:,} unknown); review.csv beside it")
    return 0
