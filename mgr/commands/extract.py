"""``mgr extract INPUT OUTPUT``: log-mel features of an audio collection, as Parquet."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options

READ_HINT = (
    "read it back: t = pyarrow.parquet.read_table(OUTPUT); "
    "mel = np.frombuffer(row['mel'], np.float16).reshape(row['n_mels'], row['n_frames'])"
)


def register(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="extract log-mel features of audio files into a Parquet dataset",
        description="Decode every audio file under INPUT (local folder or s3://bucket/prefix) and "
        "write its log-mel spectrogram to the features dataset OUTPUT (Parquet + _features.json). "
        "Re-running on the same OUTPUT extracts only what is missing.",
        epilog=READ_HINT,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="folder or s3:// prefix of audio files")
    p.add_argument("output", metavar="OUTPUT", help="folder or s3:// prefix of the features dataset")
    p.add_argument("--labels", default="none",
                   help="label source: folder (GTZAN: folder per genre), fma:TRACKS_CSV, manifest:FILE, none")
    p.add_argument("--preset", default="paper", help="feature preset (paper: sr 22050, n_fft 2048, hop 1024, 128 mels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument("--split", default="0.7,0.2,0.1",
                   help="train,val,test ratios, or 'official' for the split the source defines (FMA)")
    p.add_argument("--group-by", choices=["artist"], default=None, help="keep each artist within one split")
    p.add_argument("--subset", choices=["small", "medium", "large"], default=None, help="FMA subset to label")
    p.add_argument("--max-seconds", type=float, default=3 * 3600.0,
                   help="files longer than this get an error row instead of features")
    p.add_argument("--overwrite", action="store_true", help="clear OUTPUT and extract everything again")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def config(args: argparse.Namespace):
    """The :class:`~mgr.pipelines.catalog_config.ExtractConfig` of the command line."""
    from mgr.pipelines.catalog_config import ExtractConfig

    official = args.split == "official"
    return ExtractConfig(
        input=args.input,
        output=args.output,
        labels=args.labels,
        preset=args.preset,
        seed=args.seed,
        split=(0.7, 0.2, 0.1) if official else args.split,
        group_by=args.group_by,
        subset=args.subset,
        official_split=official,
        max_seconds=args.max_seconds,
        overwrite=args.overwrite,
        address=args.address,
        num_cpus=args.num_cpus,
        endpoint_url=args.endpoint_url,
    )


def run(args: argparse.Namespace) -> int:
    from mgr.pipelines.extract import extract

    summary = extract(config(args), progress=not args.json)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(format_summary(summary, args.output))
    return 0


def format_summary(s: dict, output: str) -> str:
    c, run = s["counts"], s["run"]
    lines = [
        f"extracted {run['files_extracted']} file(s) in {run['seconds']:.1f} s "
        f"({run['files_per_s'] or 0:.1f} files/s; {run['files_skipped_already_done']} already done)",
        f"{output}: {c['files']} files, {c['ok']} ok, {c['errors']} error(s), "
        f"{c['unlabeled']} unlabeled, {c['audio_hours']:.2f} h of audio",
    ]
    if c["by_split"]:
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in c["by_split"].items()))
    if c["by_label"]:
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in c["by_label"].items()))
    for kind, n in c["errors_by_kind"].items():
        lines.append(f"error: {n} × {kind}")
    return "\n".join(lines)
