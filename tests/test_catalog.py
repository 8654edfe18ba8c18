"""Catalog jobs at scale: resume over an OUTPUT of many parts (local and S3) labels only the
new files, exactly once; a manifest is read on the workers (never parsed on the driver);
progress lines in a non-terminal run; the progress line itself."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mgr.datasets import labelset
from mgr.pipelines.catalog_config import LabelConfig
from mgr.pipelines.label import label_catalog
from mgr.pipelines.progress import Progress
from tests.audiogen import music_like, write_audio
from tests.test_label import _model_dir

N_PARTS, ROWS_PER_PART = 30, 50  # 1500 rows already done, in many part files


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("model") / "cnn", "cnn")


def _files(root, names, seed=0):
    paths = []
    for i, name in enumerate(names):
        paths.append(write_audio(os.path.join(str(root), name), music_like("chime", 2.0, seed=seed + i)))
    return [str(p) for p in paths]


def _pad(out: str, template: dict, schema: pa.Schema, *, prefix: str, fs=None) -> list[str]:
    """Write N_PARTS parts of copies of ``template`` under other uris; returns those uris."""
    uris = []
    for p in range(N_PARTS):
        rows = [{**template, "uri": f"{prefix}/pad{p:03d}-{i:03d}.wav", "track_id": f"pad{p}-{i}"}
                for i in range(ROWS_PER_PART)]
        uris += [r["uri"] for r in rows]
        table = labelset.to_table(rows, schema)
        if fs is None:
            labelset.write_part(table, out)
        else:
            with fs.open(f"{out.split('://', 1)[1]}/{labelset.part_name([r['uri'] for r in rows])}", "wb") as fh:
                pq.write_table(table, fh)
    return uris


@pytest.mark.timeout(420)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_resume_over_many_parts_labels_only_new_files(where, ray_local, cnn, tmp_path, request):
    first = _files(tmp_path / "music", ["a.wav", "b.flac"])
    if where == "s3":
        fs, bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        out, manifest = f"s3://{bucket}/labels", f"s3://{bucket}/lists/catalog.parquet"
    else:
        fs, endpoint = None, None
        out, manifest = str(tmp_path / "labels"), str(tmp_path / "lists" / "catalog.parquet")
    s0 = label_catalog(LabelConfig(str(tmp_path / "music"), out, model_dir=cnn, endpoint_url=endpoint), log=None)
    assert s0["run"]["files"] == 2
    new = _files(tmp_path / "music", ["new1.ogg", "new2.wav"], seed=7)
    t0 = pq.read_table(out.split("://", 1)[-1], filesystem=fs) if fs else pq.read_table(out)
    template = next(r for r in t0.to_pylist() if r["error"] is None)
    pads = _pad(out, template, t0.schema, prefix=str(tmp_path / "gone"), fs=fs)
    # the manifest: every done uri (padded rows name files that no longer exist: never read) + 2 new files
    table = pa.table({"uri": pads + first + new})
    if fs:
        with fs.open(manifest.split("://", 1)[1], "wb") as fh:
            pq.write_table(table, fh)
    else:
        os.makedirs(os.path.dirname(manifest))
        pq.write_table(table, manifest)
    s = label_catalog(LabelConfig(f"manifest:{manifest}", out, model_dir=cnn, endpoint_url=endpoint), log=None)
    assert s["run"]["files"] == 2 and s["run"]["errors"] == 0  # only the new files, none of the padded ones
    assert s["run"]["files_skipped_already_done"] == len(pads) + 2 and s["complete"]
    assert s["counts"] == {"files": len(pads) + 4, "errors": 0, "catalog_files": len(pads) + 4, "missing": 0}
    if fs:
        fs.invalidate_cache()
        back = pq.read_table(out.split("://", 1)[1], filesystem=fs, columns=["uri"])
    else:
        back = pq.read_table(out, columns=["uri"])
    uris = back.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == len(pads) + 4 and set(new) <= set(uris)  # exactly once
    again = label_catalog(LabelConfig(f"manifest:{manifest}", out, model_dir=cnn, endpoint_url=endpoint), log=None)
    assert again["run"]["files"] == 0 and again["counts"]["files"] == len(pads) + 4


@pytest.mark.timeout(180)
def test_manifest_is_read_on_the_workers_and_progress_shows(ray_local, cnn, tmp_path, monkeypatch, capsys):
    """The driver never parses the manifest (its CSV and pandas readers fail here; Ray's
    workers are other processes), and a non-terminal run prints progress lines."""
    import pandas as pd
    import pyarrow.csv as pcsv

    _files(tmp_path / "lists" / "music", ["x.wav", "y.flac", "z.ogg"])
    man = tmp_path / "lists" / "catalog.csv"
    man.write_text("uri,track_id,album\nmusic/x.wav,X,one\nmusic/y.flac,,two\n"
                   f"{tmp_path / 'lists' / 'music' / 'z.ogg'},Z,\n")

    def refuse(*_a, **_k):
        raise AssertionError("the manifest was parsed on the driver")

    for mod, name in ((pcsv, "read_csv"), (pd, "read_csv"), (pd, "read_parquet")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setenv("MGR_PROGRESS_SECONDS", "0")
    s = label_catalog(LabelConfig(f"manifest:{man}", str(tmp_path / "labels"), model_dir=cnn, files_per_task=1),
                      log=lambda _l: None)
    monkeypatch.undo()
    rows = {r["track_id"]: r for r in pq.read_table(str(tmp_path / "labels")).to_pylist()}
    assert set(rows) == {"X", "y", "Z"} and s["run"]["files"] == 3 and s["complete"]
    assert rows["X"]["uri"] == str(tmp_path / "lists" / "music" / "x.wav") and rows["X"]["album"] == "one"
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("labeled ")]
    assert lines and lines[-1].startswith("labeled 3/3 files (100%), 0 error(s)"), err[-2000:]
    assert all("files/s" in ln and "audio-min/s" in ln and "ETA" in ln for ln in lines)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_line_terminal_and_log():
    clock = _Clock()
    log = io.StringIO()
    p = Progress("labeled", 100, stream=log, interval=30, clock=clock)
    clock.t = 10
    p.update(files=10, errors=1, audio_s=600)  # 10 s: not yet a line
    assert log.getvalue() == ""
    clock.t = 31
    p.update(files=10, audio_s=600)
    assert log.getvalue() == ("labeled 20/100 files (20%), 1 error(s), 0.65 files/s, 0.65 audio-min/s, "
                              "ETA 2:04\n")
    p.close()
    assert log.getvalue().count("\n") == 2

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    clock.t = 0
    q = Progress("extracted", 4, stream=tty, clock=clock)
    for i in range(4):
        clock.t += 1
        q.update(files=1)
    q.close()
    text = tty.getvalue()
    assert text.count("\r") == 5 and text.endswith("extracted 4/4 files (100%), 0 error(s), 1.00 files/s, "
                                                   "0.00 audio-min/s, ETA -\n")
    silent = io.StringIO()
    Progress("labeled", 3, stream=silent, enabled=False).close()
    assert silent.getvalue() == ""


def test_job_configs_are_frozen_and_name_the_bad_option():
    import dataclasses

    from mgr.errors import ConfigError
    from mgr.io.location import Location
    from mgr.pipelines.catalog_config import ExtractConfig

    cfg = LabelConfig("/x", "/y", model_dir="/m", actors="1,4")
    assert cfg.actors == (1, 4) and isinstance(cfg.output, Location) and isinstance(cfg.model_dir, Location)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 5
    for kw, option in ((dict(top_k=0), "--top-k"), (dict(min_confidence=2), "--min-confidence"),
                       (dict(max_windows=0), "--max-windows"), (dict(actors="3,1"), "--actors"),
                       (dict(gpus_per_actor=-1), "--gpus-per-actor"), (dict(hop_seconds=0), "--hop-seconds")):
        with pytest.raises(ConfigError, match=option):
            LabelConfig("/x", "/y", model_dir="/m", **kw)
    m = LabelConfig("manifest:s3://b/l.csv", "/y", model_dir="/m")
    assert m.manifest and m.catalog.uri == "s3://b/l.csv" and m.catalog_text == "manifest:s3://b/l.csv"
    assert m.replace(top_k=2).catalog_text == "manifest:s3://b/l.csv"
    e = ExtractConfig("/a", "/b", split="0.8,0.1,0.1")
    assert e.split == (0.8, 0.1, 0.1) and e.input.uri == "/a"
    for kw, option in ((dict(split="1,2"), "--split"), (dict(group_by="album"), "--group-by"),
                       (dict(files_per_task=0), "--files-per-task"), (dict(subset="tiny"), "--subset")):
        with pytest.raises(ConfigError, match=option):
            ExtractConfig("/a", "/b", **kw)


@pytest.mark.timeout(300)
def test_extract_joins_label_files_on_the_workers(ray_local, tmp_path, monkeypatch):
    """``mgr extract --labels fma:``/``manifest:``: the label file is read and joined with the
    listing in Ray tasks, key partition by key partition (the driver's pandas and Arrow CSV
    readers fail here); the result equals the in-process records of the same label file."""
    import pandas as pd
    import pyarrow.csv as pcsv

    from mgr.datasets.sources import records_for
    from mgr.datasets.sources.split import assign_splits
    from mgr.pipelines.catalog_config import ExtractConfig
    from mgr.pipelines.extract import extract
    from tests.test_sources import write_tracks_csv

    fma = tmp_path / "fma_small"
    tracks = {}
    for i, (genre, split) in enumerate([("Rock", "training"), ("Pop", "validation"), ("Rock", "test"),
                                        ("Pop", "training"), ("Folk", "training"), ("Folk", "test")]):
        tid = f"{(i + 1) * 1000 + i:06d}"  # six folders: several key partitions
        tracks[tid] = (i % 3, split, "small", genre)
        _files(fma, [f"{tid[:3]}/{tid}.wav"], seed=i)
    tracks["099134"] = (9, "training", "small", "Rock")  # a broken file, as in the real fma_small
    (fma / "099").mkdir()
    (fma / "099" / "099134.wav").write_bytes(b"RIFF" + b"\0" * 40)
    _files(fma, ["notes/README.wav"], seed=9)  # not a track: kept, unlabelled
    (tmp_path / "fma_metadata").mkdir()
    csv = write_tracks_csv(tmp_path / "fma_metadata" / "tracks.csv", tracks)
    man = tmp_path / "manifest.csv"
    man.write_text("uri,label,split\n" + "".join(
        f"{tid[:3]}/{tid}.wav,{g},{'test' if j % 2 else ''}\n" for j, (tid, (_, _, _, g)) in enumerate(tracks.items()))
        + f"{fma / 'notes' / 'README.wav'},Noise,\n./gone/../gone.wav,Rock,\n")

    def refuse(*_a, **_k):
        raise AssertionError("a label file was parsed on the driver")

    for mod, name in ((pcsv, "read_csv"), (pd, "read_csv"), (pd, "read_parquet")):
        monkeypatch.setattr(mod, name, refuse)
    runs = {}
    for spec, extra in ((f"fma:{csv}", {"official_split": True}), (f"manifest:{man}", {})):
        out = str(tmp_path / spec.split(":")[0])
        runs[spec] = extract(ExtractConfig(str(fma), out, labels=spec, **extra), progress=False)
    monkeypatch.undo()
    uris = sorted(str(p) for p in fma.rglob("*.wav"))
    for spec, extra in ((f"fma:{csv}", {"official_split": True}), (f"manifest:{man}", {})):
        got = {r["uri"]: r for r in pq.read_table(str(tmp_path / spec.split(":")[0]),
                                                  columns=["uri", "label", "split", "error"]).to_pylist()}
        want = records_for(spec, uris, input_uri=str(fma))
        assign_splits(want, keep_source_split=True)
        n = 8 if spec.startswith("fma") else 9  # the manifest's gone.wav: an error row, not lost
        assert len(got) == len(want) == n and runs[spec]["counts"]["files"] == n
        for rec in want:
            row = got[rec["uri"]]
            ok = rec.get("error") is None and "099134" not in rec["uri"]  # the broken file: an error row
            assert (row["error"] is None) == ok, row
            assert (row["label"], row["split"]) == (rec["label"], rec["split"] if ok else None), rec["uri"]
    fma_rows = {r["uri"]: r for r in pq.read_table(str(tmp_path / "fma")).to_pylist()}
    assert {r["label"] for r in fma_rows.values()} == {"Rock", "Pop", "Folk", None}
    assert fma_rows[str(fma / "099" / "099134.wav")]["error"]
    assert fma_rows[str(fma / "006" / "006005.wav")]["split"] == "test"  # FMA's official split
    man_rows = {r["uri"]: r for r in pq.read_table(str(tmp_path / "manifest")).to_pylist()}
    assert man_rows[str(fma / "notes" / "README.wav")]["label"] == "Noise"
    assert man_rows[str(fma / "gone.wav")]["error"] == "listed in the manifest but not found under INPUT"


def test_a_flat_folder_is_planned_as_blocks_for_every_cpu(ray_local, tmp_path):
    """A flat folder is one listing task and one hash partition; its todo is still cut into
    about four blocks per CPU (a map stage gives a block to one task: one block was one actor
    working through the whole catalog while the others waited), every file in one block."""
    import ray

    from mgr.io.location import Location
    from mgr.pipelines.catalog import audio_rows
    from mgr.pipelines.output import DatasetOutput, Listing

    names = [f"t{i:02d}.wav" for i in range(13)]
    for n in names:
        (tmp_path / "cat").mkdir(exist_ok=True)
        (tmp_path / "cat" / n).write_bytes(b"RIFF")  # only listed here, never decoded
    out = DatasetOutput(Location(str(tmp_path / "out")), command="test", marker="_SUCCESS.json")
    with out.open():
        plan = out.plan(Listing(Location(str(tmp_path / "cat")), audio_rows))
        blocks = [ray.get(r) for r in plan.todo_refs]
    cpus = int(ray.cluster_resources()["CPU"])
    assert plan.todo == 13 and len(blocks) >= 4 * cpus
    assert sum(1 for b in blocks if b.num_rows) >= 4 * cpus  # several non-empty blocks, not one
    uris = [u for b in blocks for u in b.column("uri").to_pylist()]
    assert sorted(os.path.basename(u) for u in uris) == names
