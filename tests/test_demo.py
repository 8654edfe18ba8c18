"""The demo, quick size: the whole pipeline end to end, so `make demo` cannot silently break."""

import os

import pytest

from mgr.experiments.demo import SIZES, generate_collection

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


# The quick demo end to end (summary, labels, figures, reports, console) runs as `make demo`
# does, in a subprocess: tests/test_console.py::test_the_quick_demo_end_to_end_and_its_console.
