"""Annotation formats: PySlowFast CSV, mmaction2 list, official Kinetics CSV; label maps; bad lines."""
import os

import pytest

from gcvideo.data.annotations import (DEFAULT_KINETICS400_LABEL_MAP, AnnotationError, class_key, detect_format,
                                      load_annotations, read_label_map)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def k400_map():
    return DEFAULT_KINETICS400_LABEL_MAP


def test_shipped_label_map_is_the_standard_400_classes(k400_map):
    assert k400_map == os.path.join(ROOT, "datasets", "kinetics400", "label_map.txt")
    names = read_label_map(k400_map)
    assert len(names) == 400
    assert names[0] == "abseiling" and names[1] == "air drumming" and names[6] == "arm wrestling"
    assert names[227] == "playing cricket" and names[399] == "zumba"
    assert names == sorted(names, key=str.lower)  # the standard alphabetical order
    assert len({class_key(n) for n in names}) == 400  # normalised names stay distinct


def test_class_key():
    assert class_key("air drumming") == class_key("air_drumming") == class_key("Air-Drumming") == "air_drumming"
    assert class_key("passing American football (in game)") == "passing_american_football_in_game"
    assert class_key("massaging person's head") == class_key("massaging_persons_head")


def test_slowfast_csv_relative_absolute_and_prefix(tmp_path):
    f = write(tmp_path / "train.csv", "a/x.mp4 3\n\n/abs/y.mp4 0\n# comment\nz.mp4 399\n")
    recs = load_annotations(f, num_classes=400)
    assert [(r.path, r.label, r.line) for r in recs] == [
        (str(tmp_path / "a/x.mp4"), 3, 1), ("/abs/y.mp4", 0, 3), (str(tmp_path / "z.mp4"), 399, 5)]
    recs = load_annotations(f, fmt="slowfast", path_prefix="/data/k400", num_classes=400)
    assert recs[0].path == "/data/k400/a/x.mp4" and recs[1].path == "/abs/y.mp4"


def test_mmaction_list_with_class_names(tmp_path, k400_map):
    f = write(tmp_path / "kinetics400_val_list_videos.txt",
              "abseiling/0wR5jVB-WPk_000417_000427.mp4 0\nair_drumming/b.mp4 air_drumming\nc.mp4 zumba\n")
    recs = load_annotations(f, fmt="mmaction", path_prefix="videos_val", label_map=k400_map, num_classes=400)
    assert [r.label for r in recs] == [0, 1, 399]
    assert recs[0].path == os.path.join("videos_val", "abseiling/0wR5jVB-WPk_000417_000427.mp4")


def test_paths_with_spaces_tab_or_quotes(tmp_path):
    f = write(tmp_path / "l.txt", "air drumming/a.mp4\t1\n\"air drumming/b.mp4\" 1\nu.mp4 -1\n")
    recs = load_annotations(f, num_classes=400)
    assert [os.path.relpath(r.path, tmp_path) for r in recs] == ["air drumming/a.mp4", "air drumming/b.mp4", "u.mp4"]
    assert [r.label for r in recs] == [1, 1, -1]  # -1 = unknown


KINETICS_CSV = ('label,youtube_id,time_start,time_end,split,is_cc\n'
                'abseiling,-3B32lodo2M,59,69,val,0\n'
                '"air drumming",_dbcJuKJQNs,40,50,val,0\n'
                '"passing American football (in game)",abc,0,10,val,1\n')


@pytest.mark.parametrize("folder_style", ["spaces", "underscores"])
def test_kinetics_csv_class_folders(tmp_path, folder_style):
    f = write(tmp_path / "kinetics_val.csv", KINETICS_CSV)
    videos = tmp_path / "videos_val"
    names = ["abseiling", "air drumming", "passing American football (in game)"]
    for n in names:
        (videos / (n if folder_style == "spaces" else n.replace(" ", "_"))).mkdir(parents=True)
    recs = load_annotations(f, path_prefix=str(videos), num_classes=400)  # auto format, auto layout
    assert [r.label for r in recs] == [0, 1, 208]
    folder = "air drumming" if folder_style == "spaces" else "air_drumming"
    assert recs[1].path == str(videos / folder / "_dbcJuKJQNs_000040_000050.mp4")
    assert recs[0].path == str(videos / "abseiling" / "-3B32lodo2M_000059_000069.mp4")
    assert [r.line for r in recs] == [2, 3, 4]


def test_kinetics_csv_flat_and_test_split(tmp_path):
    f = write(tmp_path / "kinetics_val.csv", KINETICS_CSV)
    recs = load_annotations(f, num_classes=400, clip_layout="flat")
    assert recs[1].path == str(tmp_path / "_dbcJuKJQNs_000040_000050.mp4")
    t = write(tmp_path / "kinetics_test.csv", "youtube_id,time_start,time_end,split\nxyz,5,15,test\n")
    recs = load_annotations(t, fmt="kinetics_csv", num_classes=400)
    assert [(os.path.basename(r.path), r.label) for r in recs] == [("xyz_000005_000015.mp4", -1)]
    with pytest.raises(AnnotationError, match="no label column"):
        load_annotations(t, fmt="kinetics_csv", clip_layout="class")


def test_detect_format():
    assert detect_format(["label,youtube_id,time_start,time_end,split"]) == "kinetics_csv"
    assert detect_format(["abseiling,-3B32lodo2M,59,69,val,0"]) == "kinetics_csv"
    assert detect_format(["", "a.mp4 1"]) == "slowfast"


@pytest.mark.parametrize("text,fmt,message", [
    ("a.mp4 1\nb.mp4 x y\n", "slowfast", r"train.csv:2: expected 'path label'.*got 3 fields"),
    ("a.mp4 1\nb.mp4 0 3\n", "mmaction", r"train.csv:2: expected 'path label'.*multi-label"),
    ("a.mp4 1\nb.mp4 0 3\n", "auto", r"train.csv:2: 3 fields .*Set DATA.FORMAT slowfast"),
    ("abseiling,-3B32lodo2M,59\n", "kinetics_csv", r"train.csv:1: expected the official Kinetics CSV columns"),
    ("a.mp4 1\n\nb.mp4 400\n", "slowfast", r"train.csv:3: label 400 out of range 0..399"),
    ("a.mp4 -2\n", "slowfast", r"train.csv:1: label -2 out of range"),
    ("a.mp4 abseiling\n", "slowfast", r"train.csv:1: label 'abseiling' is not a class index and no label map"),
    ('label,youtube_id,time_start,time_end,split\nabseiling,x,1,11,val\n"air drums",y,1,11,val\n', "auto",
     r"train.csv:3: unknown class name 'air drums'"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,x,1,11\n", "auto",
     r"train.csv:2: expected 5 fields"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,x,1.5,11,val\n", "auto",
     r"train.csv:2: time_start = '1.5' is not a whole"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, fmt, message):
    f = write(tmp_path / "train.csv", text)
    with pytest.raises(AnnotationError, match=message):
        load_annotations(f, fmt=fmt, num_classes=400)


def test_unknown_class_name_in_list(tmp_path, k400_map):
    f = write(tmp_path / "val.txt", "a.mp4 zumba\nb.mp4 not_a_class\n")
    with pytest.raises(AnnotationError, match=r"val.txt:2: unknown class name 'not_a_class'"):
        load_annotations(f, label_map=k400_map)


def test_label_map_errors(tmp_path):
    with pytest.raises(AnnotationError, match=r"map.txt:3: class 'a_b' repeats line 1"):
        read_label_map(write(tmp_path / "map.txt", "a b\nc\na_b\n"))
    with pytest.raises(AnnotationError, match=r"map.txt:2: empty line"):
        read_label_map(write(tmp_path / "map.txt", "a\n\nb\n"))
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations(str(tmp_path / "nope.csv"))


def test_smaller_label_map_limits_range(tmp_path):
    m = write(tmp_path / "classes.txt", "left\nright\n")
    f = write(tmp_path / "t.csv", "a.mp4 right\nb.mp4 2\n")
    with pytest.raises(AnnotationError, match=r"t.csv:2: label 2 out of range 0..1"):
        load_annotations(f, label_map=m, num_classes=400)


def test_pyslowfast_list_forms(tmp_path):
    """PySlowFast also reads 'path fn label' and 'path' alone (test lists), and other separators."""
    f = write(tmp_path / "train.csv", "a.mp4 1\nb.mp4 17 2\nc.mp4\n")
    recs = load_annotations(f, fmt="slowfast", num_classes=400)
    assert [(os.path.basename(r.path), r.label, r.line) for r in recs] == [("a.mp4", 1, 1), ("b.mp4", 2, 2),
                                                                            ("c.mp4", -1, 3)]
    with pytest.raises(AnnotationError, match=r"train.csv:3: .*c.mp4 has no label"):
        load_annotations(f, fmt="slowfast", num_classes=400, require_labels=True)
    g = write(tmp_path / "val.csv", "dir one/a b.mp4,3\nc.mp4,0\n")
    recs = load_annotations(g, num_classes=400, sep=",")
    assert [(os.path.basename(r.path), r.label) for r in recs] == [("a b.mp4", 3), ("c.mp4", 0)]


def test_training_split_needs_labels(tmp_path):
    from gcvideo.config import get_cfg
    from gcvideo.data import build_dataset

    write(tmp_path / "train.csv", "a.mp4 1\nb.mp4 -1\n")
    write(tmp_path / "val.csv", "a.mp4 1\nb.mp4 -1\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    with pytest.raises(AnnotationError, match=r"train.csv:2: .*b.mp4 has no label"):
        build_dataset(cfg, "train")
    assert [r.label for r in build_dataset(cfg, "val").records] == [1, -1]  # unknown labels may be evaluated


def test_video_records_table_rows(tmp_path):
    """load_annotations gives a VideoRecords table: rows as VideoRecord, paths of any characters kept."""
    from gcvideo.data.annotations import VideoRecord, VideoRecords

    f = write(tmp_path / "u.csv", "caf\u00e9/\u00e0 b.mp4\t3\nx.mp4 1\n\n/abs/\u4e2d.mp4 -1\n")
    recs = load_annotations(f, num_classes=400)
    assert isinstance(recs, VideoRecords) and len(recs) == 3
    assert list(recs) == [VideoRecord(os.path.join(str(tmp_path), "caf\u00e9/\u00e0 b.mp4"), 3, 1),
                          VideoRecord(os.path.join(str(tmp_path), "x.mp4"), 1, 2), VideoRecord("/abs/\u4e2d.mp4", -1, 4)]
    assert recs[-1] == recs[2] and recs.labels.tolist() == [3, 1, -1] and recs.lines.tolist() == [1, 2, 4]
    with pytest.raises(IndexError):
        recs[3]
    assert VideoRecords.from_records(recs) is recs
    again = VideoRecords.from_records(list(recs))
    assert list(again) == list(recs) and again._paths == recs._paths
    with pytest.raises(ValueError):
        recs.labels[0] = 5  # read-only: workers share the pages


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/self/smaps_rollup")
def test_forked_reader_shares_the_table_pages():
    """A forked process reading every row copies almost nothing of a VideoRecords table; the same rows
    as a list of VideoRecord objects are copied page by page (pytorch/pytorch#13246)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_records import worker_growth
    from gcvideo.data.annotations import VideoRecords

    n = 60000
    table = VideoRecords([f"/k400/train/class_{i % 400:03d}/{i:011d}_000010_000020.mp4" for i in range(n)],
                         [i % 400 for i in range(n)], list(range(1, n + 1)))
    got = worker_growth(table, 2)
    assert all(g["n"] == got[0]["n"] for g in got) and max(g["uss"] for g in got) < 2048  # kB
    rows = list(table)
    assert min(g["uss"] for g in worker_growth(rows, 2)) > 8 * 1024  # ~250 bytes a row copied


@pytest.mark.parametrize("encoding,message", [
    ("latin-1", r"l.csv:2: not UTF-8 text \(byte 0xe9 at column 4\); re-save it as UTF-8"),
    ("utf-16", r"l.csv:1: UTF-16 text \(byte-order mark\); re-save it as UTF-8"),
    ("utf-16-le", r"l.csv:1: NUL bytes: UTF-16 or binary, not UTF-8 text; re-save it as UTF-8"),
])
def test_non_utf8_file_names_file_and_line(tmp_path, encoding, message):
    """A file saved in another encoding is one AnnotationError naming file:line (not a UnicodeDecodeError)."""
    f = tmp_path / "l.csv"
    f.write_bytes("a.mp4 1\ncaf\u00e9.mp4 2\n".encode(encoding))
    with pytest.raises(AnnotationError, match=message):
        load_annotations(str(f), num_classes=400)
    m = tmp_path / "map.txt"
    m.write_bytes("left\nr\u00e9ght\n".encode(encoding))
    with pytest.raises(AnnotationError, match=message.replace("l.csv", "map.txt").replace("column 4", "column 2")):
        read_label_map(str(m))


def test_utf8_with_bom_and_crlf(tmp_path):
    f = tmp_path / "l.csv"
    f.write_bytes("a.mp4 1\r\ncaf\u00e9.mp4\t2\r\n".encode("utf-8-sig"))
    recs = load_annotations(str(f), num_classes=400)
    assert [(os.path.basename(r.path), r.label, r.line) for r in recs] == [("a.mp4", 1, 1), ("caf\u00e9.mp4", 2, 2)]
    f.write_bytes(b"label,youtube_id,time_start,time_end,split\rabseiling,x,1,11,val\r")  # classic Mac line ends
    assert [(os.path.basename(r.path), r.line) for r in load_annotations(str(f), clip_layout="flat")] == [
        ("x_000001_000011.mp4", 2)]


def test_long_line_refused_without_reading_it(tmp_path):
    """A line over the cap is an error naming file:line; the reader holds at most the cap of it
    (tracemalloc peak), never the whole 8 MB line."""
    import tracemalloc

    from gcvideo.data import annotations

    f = tmp_path / "big.csv"
    with open(f, "w") as out:
        out.write("a.mp4 1\n" + "b" * (8 << 20) + ".mp4 2\nc.mp4 3\n")
    tracemalloc.start()
    try:
        with pytest.raises(AnnotationError, match=r"big.csv:2: line longer than 65536 bytes"):
            load_annotations(str(f), num_classes=400)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert annotations.MAX_LINE_BYTES == 65536 and peak < 1 << 20, peak
    ok = tmp_path / "ok.csv"
    ok.write_text("a.mp4 1\n" + "b" * (65536 - 6) + ".mp4 2\n")  # exactly the cap, without its newline
    assert len(load_annotations(str(ok), num_classes=400)[1].path) > 65530


def test_detect_format_cannot_mistake_a_list_for_a_csv(tmp_path):
    """A list path with commas is a list; a row that is neither clearly is an error asking for DATA.FORMAT."""
    f = write(tmp_path / "train.csv", "a,b,c,d.mp4 3\ne,f,g.mp4\t7\n")
    recs = load_annotations(f, num_classes=400)
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in recs] == [("a,b,c,d.mp4", 3), ("e,f,g.mp4", 7)]
    assert detect_format(["x,1,11,val.mp4 3"]) == "slowfast"  # a space before the label: not a CSV row
    assert detect_format(['"air drumming",_dbcJuKJQNs,40,50,val']) == "kinetics_csv"
    assert detect_format(["_dbcJuKJQNs,40,50,test"]) == "kinetics_csv"
    for text, problem in [("a,b,c,d.mp4", "time_start = 'b' is not a number"),
                          ("abseiling,x,1,11,val,2", "is_cc = '2' is not 0 or 1"),
                          ('"air drumming",x,1s,11,val', "time_start = '1s' is not a number")]:
        g = write(tmp_path / "test.csv", "# videos\n" + text + "\n")
        with pytest.raises(AnnotationError, match=rf"test.csv:2: cannot tell the format .*\({problem}\).*"
                                                  r"set DATA.FORMAT"):
            load_annotations(g, num_classes=400)
    g = write(tmp_path / "test.csv", "a,b,c,d.mp4\n")
    recs = load_annotations(g, fmt="slowfast", num_classes=400)  # an explicit format wins
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in recs] == [("a,b,c,d.mp4", -1)]


def test_config_format_decides_without_detection(tmp_path):
    """DATA.FORMAT is checked against the formats annotations.py reads, and an explicit one wins."""
    from gcvideo.config import ConfigError, get_cfg, validate_cfg
    from gcvideo.data import build_dataset
    from gcvideo.data.annotations import FORMATS

    cfg = get_cfg()
    cfg.DATA.FORMAT = "csv"
    with pytest.raises(ConfigError, match="DATA.FORMAT = 'csv'.*" + ", ".join(repr(f) for f in FORMATS)):
        validate_cfg(cfg, check_files=False)
    write(tmp_path / "test.csv", "x,1,2,val\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    assert os.path.basename(build_dataset(cfg, "test").records[0].path) == "x_000001_000002.mp4"
    cfg.DATA.FORMAT = "slowfast"
    assert build_dataset(cfg, "test").records[0].path == str(tmp_path / "x,1,2,val")


def test_conflicting_duplicates_name_both_lines(tmp_path, caplog):
    """One video with two labels is an error naming both lines (list and official CSV); the same
    label twice keeps both rows and warns once."""
    f = write(tmp_path / "train.csv", "a,b,c,d.mp4 3\nx.mp4 2\n\na,b,c,d.mp4 7\n")
    with pytest.raises(AnnotationError, match=r"train.csv:4: .*a,b,c,d.mp4 is listed again with label 7; "
                                              r"line 1 gives it label 3"):
        load_annotations(f, num_classes=400)
    k = write(tmp_path / "kinetics_val.csv", KINETICS_CSV + "abseiling,_dbcJuKJQNs,40,50,val,0\n")
    with pytest.raises(AnnotationError, match=r"kinetics_val.csv:5: .*_dbcJuKJQNs_000040_000050.mp4 is listed "
                                              r"again with label 0; line 3 gives it label 1"):
        load_annotations(k, num_classes=400, clip_layout="flat")
    g = write(tmp_path / "val.csv", "x.mp4 2\ny.mp4 1\nx.mp4 2\ny.mp4 1\n")
    with caplog.at_level("WARNING", logger="gcvideo.data.annotations"):
        recs = load_annotations(g, num_classes=400)
    assert [(os.path.basename(r.path), r.label, r.line) for r in recs] == [
        ("x.mp4", 2, 1), ("y.mp4", 1, 2), ("x.mp4", 2, 3), ("y.mp4", 1, 4)]
    warned = [r.getMessage() for r in caplog.records if r.name == "gcvideo.data.annotations"]
    assert len(warned) == 1 and "val.csv: 2 line(s) repeat a video" in warned[0] and "lines 1 and 3" in warned[0]


def test_tab_separated_paths_keep_every_character(tmp_path):
    """In a TAB-separated line the path is taken as written (leading/trailing spaces too); the label is trimmed."""
    f = write(tmp_path / "l.txt", " a.mp4\t3\nb c.mp4 \t 4 \n\t d.mp4\t5\n")
    recs = load_annotations(f, num_classes=400)
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in recs] == [(" a.mp4", 3), ("b c.mp4 ", 4),
                                                                             (" d.mp4", 5)]
    recs = load_annotations(f, num_classes=400, sep="\t")
    assert [os.path.relpath(r.path, tmp_path) for r in recs] == [" a.mp4", "b c.mp4 ", " d.mp4"]


@pytest.mark.parametrize("layout", ["class", "flat"])
def test_kinetics_csv_clips_downloaded_as_webm_or_mkv(tmp_path, layout):
    """The official CSV's clips are found whatever their video extension (as prepare_kinetics finds them):
    .webm / .mkv / upper case; .mp4 first when a clip has several; .mp4 when none is there (reported missing)."""
    from gcvideo.data.annotations import video_stem

    videos = tmp_path / "videos_val"
    dirs = {"abseiling": videos / "abseiling", "air drumming": videos / "air_drumming",
            "passing American football (in game)": videos / "passing_American_football_(in_game)"}
    for d in dirs.values():
        d.mkdir(parents=True)
    where = (lambda c: dirs[c]) if layout == "class" else (lambda c: videos)
    (where("abseiling") / "-3B32lodo2M_000059_000069.webm").write_bytes(b"")
    (where("air drumming") / "_dbcJuKJQNs_000040_000050.MKV").write_bytes(b"")
    (where("air drumming") / "_dbcJuKJQNs_000040_000050.txt").write_bytes(b"")
    for ext in (".webm", ".mp4"):
        (where("passing American football (in game)") / f"abc_000000_000010{ext}").write_bytes(b"")
    f = write(tmp_path / "kinetics_val.csv", KINETICS_CSV + "abseiling,gone,1,11,val,0\n")
    recs = load_annotations(f, path_prefix=str(videos), num_classes=400, clip_layout=layout)
    assert [os.path.relpath(r.path, videos) for r in recs] == [
        os.path.relpath(where("abseiling") / "-3B32lodo2M_000059_000069.webm", videos),
        os.path.relpath(where("air drumming") / "_dbcJuKJQNs_000040_000050.MKV", videos),
        os.path.relpath(where("passing American football (in game)") / "abc_000000_000010.mp4", videos),
        os.path.relpath(where("abseiling") / "gone_000001_000011.mp4", videos)]
    assert [video_stem(n) for n in ("a.webm", "b.MKV", "c.mp4.txt", ".hidden.mp4", "d")] == ["a", "b", None, None,
                                                                                           None]


def test_kinetics_csv_webm_clip_is_decoded_not_missing(tmp_path):
    """Issue 35's case end to end: a present .webm clip of the official CSV is a decoded test item."""
    av = pytest.importorskip("av")
    import numpy as np

    from gcvideo.config import get_cfg
    from gcvideo.data import build_dataset

    codec = next((c for c in ("libvpx-vp9", "libvpx") if c in av.codecs_available), None)
    if codec is None:
        pytest.skip("PyAV has no VP8/VP9 encoder")
    clip = tmp_path / "videos_val" / "abseiling" / "-3B32lodo2M_000059_000069.webm"
    clip.parent.mkdir(parents=True)
    with av.open(str(clip), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(16):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")))
        c.mux(s.encode())
    header = KINETICS_CSV.splitlines(keepends=True)[0]
    write(tmp_path / "kinetics_val.csv", header + "abseiling,-3B32lodo2M,59,69,val,0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR, cfg.DATA.TEST_FILE = str(tmp_path), "kinetics_val.csv"
    cfg.DATA.TEST_PATH_PREFIX = str(tmp_path / "videos_val")
    cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, cfg.DATA.TEST_CROP_SIZE = 4, 2, 32
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 1, 1
    item = build_dataset(cfg, "test")[0]
    assert (item["path"], item["ok"], item["error"], item["label"]) == (str(clip), True, "", 0)
    assert item["video"].shape == (1, 3, 4, 32, 32)


def test_check_clean_copy_counts_lines_as_the_reader(tmp_path):
    """check_annotations drops the lines load_annotations numbered: a TAB-separated path with a form feed is one line
    (str.splitlines would make it two and drop the wrong ones)."""
    from gcvideo.data.check import check_annotations

    good = os.path.join(ROOT, "tests", "data", "files", "part_0.mp4")
    f = tmp_path / "val.csv"
    f.write_bytes(f"# list\r\na\x0cb.mp4\t0\r\n{good} 1\r\ngone.mp4 2\r\n".encode())
    out = check_annotations(str(f), workers=1, progress=False)
    assert out["broken"] == 2
    assert (tmp_path / "val.clean.csv").read_bytes() == f"# list\n{good} 1\n".encode()  # \n line ends, as before
