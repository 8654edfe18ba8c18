"""The demo, quick size: the whole pipeline end to end, so `make demo` cannot silently break."""

import json
import os

import pyarrow.parquet as pq
import pytest

from mgr.experiments.demo import SIZES, generate_collection, run_demo

pytestmark = pytest.mark.timeout(600)


def test_generated_collection_has_the_catalog_layout(tmp_path):
    gen = generate_collection(str(tmp_path), size=SIZES["quick"], seed=1)
    styles = sorted(os.listdir(gen["collection"]))
    assert styles == sorted(SIZES["quick"].styles)
    exts = {f.rsplit(".", 1)[1] for s in styles for f in os.listdir(os.path.join(gen["collection"], s))}
    assert exts == {"wav", "flac", "ogg", "mp3"}
    assert gen["clips"] == len(styles) * SIZES["quick"].clips_per_style
    song = gen["songs"][0]
    import soundfile as sf

    info = sf.info(song["path"])
    assert info.duration >= SIZES["quick"].song_sections * SIZES["quick"].section_seconds - 3


def test_quick_demo_runs_end_to_end(ray_local, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    from mgr.experiments.synth import clip
    import soundfile as sf

    sf.write(music / "real.ogg", clip("jazz", 8.0, seed=5), 22050)
    work = tmp_path / "demo"
    res = run_demo(str(work), size="quick", music=str(music), log=lambda _m: None)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["evaluate"].keys() == {"cnn", "crnn"}
    for arch, s in summary["evaluate"].items():
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] > 0
    assert "accuracy_weighted" in summary["evaluate"]["crnn"]
    labels = pq.read_table(work / "labels")
    catalog = sorted(os.listdir(work / "catalog"))
    assert labels.num_rows == len(catalog)
    assert sorted(os.path.basename(u) for u in labels.column("uri").to_pylist()) == catalog
    assert res["label_music"]["files"] == 1
    for png in [res["timeline_png"], *res["confusion_pngs"].values()]:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
