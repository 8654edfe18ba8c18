"""Unit tests for the label sources and the split (no Ray)."""

from collections import Counter

import pandas as pd
import pytest

from mgr.errors import ConfigError, LabelSourceError
from mgr.datasets.sources import parse_labels_spec, records_for
from mgr.datasets.sources.fma import fma_records, read_tracks
from mgr.datasets.sources.split import assign_splits, parse_ratios

FMA_NO_AUDIO = ("099134", "108925", "133297")


def write_tracks_csv(path, tracks):
    """A tracks.csv shaped like fma_metadata's: two header rows, then the track_id row."""
    cols = [("album", "title"), ("artist", "id"), ("artist", "name"), ("set", "split"), ("set", "subset"),
            ("track", "genre_top"), ("track", "title")]
    lines = ["," + ",".join(c[0] for c in cols), "," + ",".join(c[1] for c in cols), "track_id" + "," * len(cols)]
    for tid, (artist, split, subset, genre) in tracks.items():
        lines.append(f"{int(tid)},Album {tid},{artist},Artist {artist},{split},{subset},{genre or ''},\"Title, {tid}\"")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def fma_uris(ids):
    return [f"/data/fma_small/{i[:3]}/{i}.mp3" for i in ids]


def test_fma_tracks_csv_with_two_row_header(tmp_path):
    tracks = {
        "000002": (1, "training", "small", "Hip-Hop"),
        "000005": (1, "validation", "small", "Hip-Hop"),
        "000010": (6, "test", "small", "Pop"),
        "000140": (54, "training", "medium", "Folk"),
        "000141": (54, "training", "large", None),
    }
    for i, tid in enumerate(FMA_NO_AUDIO):
        tracks[tid] = (900 + i, "training", "small", "Rock")
    csv = write_tracks_csv(tmp_path / "tracks.csv", tracks)
    df = read_tracks(csv)
    assert df.loc[2, "genre"] == "Hip-Hop" and df.loc[10, "split"] == "test" and df.loc[5, "split"] == "val"
    assert df.loc[140, "subset"] == "medium" and df.loc[2, "artist"] == "1"
    uris = fma_uris(list(tracks)) + ["/data/fma_small/README.mp3"]
    recs = {r["uri"]: r for r in fma_records(uris, df, subset="small")}
    assert len(recs) == len(uris)  # every file, even unknown ones, is a record
    assert recs[fma_uris(["000002"])[0]]["label"] == "Hip-Hop"
    assert recs[fma_uris(["000002"])[0]]["split"] == "train"
    assert recs[fma_uris(["000140"])[0]]["label"] is None  # medium track outside --subset small
    assert recs[fma_uris(["000141"])[0]]["label"] is None  # no genre_top
    for tid in FMA_NO_AUDIO:  # listed in tracks.csv: labelled; the extraction gives them an error row
        assert recs[fma_uris([tid])[0]]["label"] == "Rock" and recs[fma_uris([tid])[0]]["track_id"] == tid
    assert recs["/data/fma_small/README.mp3"]["label"] is None
    medium = {r["uri"]: r for r in fma_records(uris, df, subset="medium")}
    assert medium[fma_uris(["000140"])[0]]["label"] == "Folk"


def test_fma_errors_are_actionable(tmp_path):
    with pytest.raises(LabelSourceError, match="cannot read FMA tracks.csv"):
        read_tracks(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(LabelSourceError, match="lacks the columns|not FMA"):
        read_tracks(str(bad))
    csv = write_tracks_csv(tmp_path / "t.csv", {"000002": (1, "training", "small", "Pop")})
    with pytest.raises(LabelSourceError, match="ddd/dddddd.mp3"):
        fma_records(["/x/song.mp3"], read_tracks(csv))
    with pytest.raises(LabelSourceError, match="unknown FMA subset"):
        fma_records(fma_uris(["000002"]), read_tracks(csv), subset="tiny")


def test_folder_and_specs():
    uris = ["/g/blues/blues.00000.wav", "/g/rock/rock.00001.au", "s3://b/g/jazz/jazz.00002.mp3"]
    recs = records_for("folder", uris)
    assert [r["label"] for r in recs] == ["blues", "rock", "jazz"]
    assert [r["track_id"] for r in recs] == ["blues.00000", "rock.00001", "jazz.00002"]
    with pytest.raises(LabelSourceError, match="one folder per genre"):
        records_for("folder", ["/g/rock/a.wav", "/g/rock/b.wav"])
    with pytest.raises(LabelSourceError, match="unknown label source"):
        parse_labels_spec("genres.csv")
    with pytest.raises(LabelSourceError, match="needs a file"):
        parse_labels_spec("fma")
    assert all(r["label"] is None for r in records_for("none", uris))


def test_manifest_csv_and_parquet(tmp_path):
    df = pd.DataFrame({"uri": ["a/x.wav", "/abs/y.wav", "gone.wav"], "label": ["pop", "rock", "pop"],
                       "split": ["train", "Test", ""], "artist": ["A", "", "C"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    df.to_parquet(tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        recs = records_for(f"manifest:{tmp_path / name}", ["/in/a/x.wav", "/abs/y.wav", "/in/extra.wav"], input_uri="/in")
        by = {r["uri"]: r for r in recs}
        assert by["/in/a/x.wav"]["label"] == "pop" and by["/in/a/x.wav"]["split"] == "train"
        assert by["/abs/y.wav"]["split"] == "test" and by["/abs/y.wav"]["artist"] is None
        assert by["/in/extra.wav"]["label"] is None
        assert by["/in/gone.wav"]["error"] == "listed in the manifest but not found under INPUT"
        assert len(recs) == 4
    (tmp_path / "nolabel.csv").write_text("uri\nx.wav\n")
    with pytest.raises(LabelSourceError, match="lacks the column"):
        records_for(f"manifest:{tmp_path / 'nolabel.csv'}", [])


def _labelled(n_per_genre, genres=("a", "b", "c"), artists=None):
    return [
        {"uri": f"/d/{g}/{i}.wav", "track_id": f"{g}{i}", "label": g, "split": None,
         "artist": None if artists is None else f"{g}-{i % artists}", "error": None}
        for g in genres for i in range(n_per_genre)
    ]


def test_split_is_seeded_stratified_and_stable():
    recs = assign_splits(_labelled(1000), seed=7)
    for g in "abc":
        c = Counter(r["split"] for r in recs if r["label"] == g)
        assert abs(c["train"] / 1000 - 0.7) < 0.05 and abs(c["val"] / 1000 - 0.2) < 0.04 and abs(c["test"] / 1000 - 0.1) < 0.03
    again = assign_splits(_labelled(1000), seed=7)
    assert [r["split"] for r in recs] == [r["split"] for r in again]
    other = assign_splits(_labelled(1000), seed=8)
    assert [r["split"] for r in recs] != [r["split"] for r in other]
    grown = assign_splits(_labelled(1500), seed=7)  # adding files never moves existing tracks
    old = {r["uri"]: r["split"] for r in recs}
    assert all(old[r["uri"]] == r["split"] for r in grown if r["uri"] in old)


def test_split_group_by_artist_and_ratios():
    recs = assign_splits(_labelled(300, artists=20), seed=1, group_by="artist")
    by_artist = {}
    for r in recs:
        by_artist.setdefault(r["artist"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_artist.values())
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.5,0.5", "a,b,c", "0.9,0.2,-0.1"):
        with pytest.raises(ConfigError):
            parse_ratios(bad)
    kept = assign_splits([{"uri": "u", "label": "x", "split": "test", "error": None}], seed=0)
    assert kept[0]["split"] == "test"
    unlabelled = assign_splits([{"uri": "u", "label": None, "split": None, "error": None}], seed=0)
    assert unlabelled[0]["split"] is None
