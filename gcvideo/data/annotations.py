"""Annotation files: PySlowFast CSVs, mmaction2 video lists and the official Kinetics CSV.

``load_annotations`` turns any of them into a :class:`VideoRecords` table of
``(path, label, line)`` rows (indexing it gives a :class:`VideoRecord`). Formats
(see docs/data.md):

* ``slowfast`` / ``mmaction``: one video a line, ``path label``, separated by
  whitespace (or one TAB, then the path may contain spaces; a double-quoted path
  may too). Blank lines and lines starting with ``#`` are skipped. Relative paths
  are joined to ``path_prefix`` (DATA.PATH_PREFIX), or, when that is empty, to the
  annotation file's folder.
* ``kinetics_csv``: the DeepMind release ``label,youtube_id,time_start,time_end,split[,is_cc]``
  (header line; multi-word labels double-quoted) or, for the test split,
  ``youtube_id,time_start,time_end,split`` (no label: label -1). Each row is the
  clip file ``{youtube_id}_{time_start:06d}_{time_end:06d}`` with the video extension it has
  on disk (``VIDEO_EXTENSIONS``; ``.mp4`` when absent) under
  ``path_prefix`` (or the annotation folder), inside a class sub-folder (layout
  ``class``; folder names with spaces or underscores are both found) or not
  (``flat``); ``auto`` looks at the folder once.

Labels are class indices (-1 = unknown) or class names. Names are looked up in the label map
(DATA.LABEL_MAP, one name a line), ignoring case, quotes, brackets and the
difference between spaces, underscores and hyphens. A bad line (wrong number of
fields, unknown class name, label out of range, unreadable number, a line that is not
UTF-8 text or longer than ``MAX_LINE_BYTES``) raises :class:`AnnotationError` naming
``file:line``. Files are streamed a line at a time (``iter_lines``; ``iter_csv_rows`` for comma fields).
"""
from __future__ import annotations

import codecs
import csv
import functools
import itertools
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from gcvideo.utils.errors import UserError
from gcvideo.utils.io import path_manager
from gcvideo.utils.package_data import shipped_file

__all__ = ["VideoRecord", "VideoRecords", "AnnotationError", "load_annotations", "read_label_map", "class_key",
           "detect_format", "kinetics_clip_name", "iter_lines", "iter_csv_rows", "video_stem", "FORMATS",
           "CLIP_LAYOUTS", "MAX_LINE_BYTES", "VIDEO_EXTENSIONS", "DEFAULT_KINETICS400_LABEL_MAP"]

logger = logging.getLogger(__name__)

FORMATS = ("auto", "slowfast", "mmaction", "kinetics_csv")
# DATA.CLIP_LAYOUT: where the official CSV's clips lie (in class folders, flat, or "auto": look)
CLIP_LAYOUTS = ("auto", "class", "flat")
# Video file extensions (compared ignoring case), in the order a clip of the official CSV is looked
# for when its folder holds it under several (downloads are .mp4, .webm or .mkv).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".gif")
# Longest line of an annotation file or label map, in bytes: a longer one is an error naming
# file:line, and no more of it is read (a video list or Kinetics CSV line is well under 1 KiB).
MAX_LINE_BYTES = 64 * 1024
# The shipped 400-class map (standard alphabetical order), used for the official CSV
# when DATA.LABEL_MAP is empty.
DEFAULT_KINETICS400_LABEL_MAP = shipped_file("datasets/kinetics400/label_map.txt")


class AnnotationError(UserError, ValueError):
    """An annotation or label-map file has a line that cannot be used (message: ``file:line: ...``)."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: full path, class index (-1 = unknown) and 1-based line in the file."""

    path: str
    label: int
    line: int


class VideoRecords:
    """An immutable table of videos: all paths in one UTF-8 bytes buffer, labels and lines in numpy arrays.

    A sequence of :class:`VideoRecord` (``len``, ``records[i]``, iteration), built for
    DataLoader workers: a forked worker reading rows touches no per-row Python object, so
    it shares the parent's pages instead of copying them as reference counts change (a
    list of 240k records costs every worker a copy of the list; pytorch/pytorch#13246).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], lines: Sequence[int]):
        if not (len(paths) == len(labels) == len(lines)):
            raise ValueError(f"VideoRecords: {len(paths)} paths, {len(labels)} labels, {len(lines)} lines")
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self._paths = b"".join(encoded)  # every path, back to back
        self._ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))  # (N,)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (N,)
        self.lines = np.asarray(lines, dtype=np.int64).reshape(-1)  # (N,) 1-based line in the file
        self.labels.flags.writeable = False
        self.lines.flags.writeable = False

    @classmethod
    def from_records(cls, records: Union["VideoRecords", Sequence[VideoRecord]]) -> "VideoRecords":
        """The table of ``records`` (returned as is when it already is one)."""
        if isinstance(records, VideoRecords):
            return records
        return cls([r.path for r in records], [r.label for r in records], [r.line for r in records])

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        """Path of row ``i`` (decoded from the buffer; no per-row object is kept)."""
        start = int(self._ends[i - 1]) if i > 0 else 0
        return self._paths[start:int(self._ends[i])].decode("utf-8", "surrogateescape")

    def __getitem__(self, i: int) -> VideoRecord:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range 0..{n - 1}")
        return VideoRecord(self.path(i), int(self.labels[i]), int(self.lines[i]))

    def __iter__(self) -> Iterator[VideoRecord]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"VideoRecords({len(self)} videos, {len(self._paths)} path bytes)"


@functools.lru_cache(maxsize=4096)
def class_key(name: str) -> str:
    """Normalised class name: ``"Passing American football (in game)"`` -> ``passing_american_football_in_game``.

    Case, quotes and brackets are ignored; runs of spaces, underscores and hyphens
    become one underscore, so ``air drumming`` and ``air_drumming`` are the same class.
    """
    s = name.strip().lower()
    s = re.sub(r"[\"'()\[\]]", "", s)
    s = re.sub(r"[\s_\-]+", "_", s)
    return s.strip("_")


def read_label_map(path: str) -> List[str]:
    """Class names, one a line (line i = class i); errors name ``file:line``."""
    names: List[str] = []
    seen: Dict[str, int] = {}
    empty = 0  # the first empty line, an error if a class follows it
    for i, raw in iter_lines(path, "label map"):
        name = raw.strip()
        if not name:
            empty = empty or i
            continue
        if empty:
            raise AnnotationError(f"{path}:{empty}: empty line inside the label map (line i must be class i-1)")
        key = class_key(name)
        if key in seen:
            raise AnnotationError(f"{path}:{i}: class {name!r} repeats line {seen[key]}")
        seen[key] = i
        names.append(name)
    if not names:
        raise AnnotationError(f"{path}: label map is empty")
    return names


def kinetics_clip_name(youtube_id: str, time_start: int, time_end: int, ext: str = ".mp4") -> str:
    """``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (the mmaction2/ActivityNet trimmed name)."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}{ext}"


def video_stem(name: str) -> Optional[str]:
    """A video file's name without its extension (one of ``VIDEO_EXTENSIONS``, any case); None for
    other files and hidden ones (``.name``)."""
    root, ext = os.path.splitext(name)
    return root if ext.lower() in VIDEO_EXTENSIONS and not name.startswith(".") else None


def _video_files(folder: str) -> Dict[str, str]:
    """stem -> file name of the videos directly in ``folder`` (the first of ``VIDEO_EXTENSIONS``
    for a stem found with several); {} for a folder that cannot be listed."""
    try:
        names = sorted(os.path.basename(e.rstrip("/")) for e in path_manager.ls(folder))
    except Exception:
        return {}
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    out: Dict[str, str] = {}
    for name in names:
        stem = video_stem(name)
        if stem is not None and (stem not in out or rank[os.path.splitext(name)[1].lower()]
                                 < rank[os.path.splitext(out[stem])[1].lower()]):
            out[stem] = name
    return out


def _join(prefix: str, path: str) -> str:
    if not prefix or os.path.isabs(path) or "://" in path:
        return path
    return prefix.rstrip("/") + "/" + path if "://" in prefix else os.path.join(prefix, path)


def _joiner(prefix: str):
    """``_join`` with ``prefix`` fixed, for one call per annotation line."""
    if not prefix:
        return lambda path: path
    head = prefix.rstrip("/") + "/" if "://" in prefix else (prefix if prefix.endswith("/") else prefix + "/")
    return lambda path: path if path.startswith("/") or "://" in path else head + path


def iter_lines(path: str, what: str = "annotation file",
               max_bytes: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file, streamed: the text without its line end
    (``\\n``, ``\\r\\n``, or a lone ``\\r`` as in classic Mac files, like ``str.splitlines``).

    A UTF-8 byte-order mark is skipped. No line is held longer than ``max_bytes``
    (``MAX_LINE_BYTES``): a longer one, text in another encoding (UTF-16, Latin-1, ...) or
    NUL bytes are an :class:`AnnotationError` naming ``file:line``.
    """
    limit = MAX_LINE_BYTES if max_bytes is None else max_bytes
    if not path_manager.exists(path):
        raise AnnotationError(f"{path}: {what} does not exist")
    with path_manager.open(path, "rb") as f:
        n = 0
        while True:
            raw = f.readline(limit + 1)  # bounded: never the whole of a huge line
            if not raw:
                return
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            elif len(raw) > limit:
                raise AnnotationError(f"{path}:{n + 1}: line longer than {limit} bytes (read no further); "
                                      f"is this {what} the right file?")
            if n == 0:
                if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise AnnotationError(f"{path}:1: UTF-16 text (byte-order mark); re-save it as UTF-8")
                if raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
            for part in raw.split(b"\r") if b"\r" in raw else (raw,):
                n += 1
                try:
                    text = part.decode("utf-8")
                except UnicodeDecodeError as e:
                    column = len(part[:e.start].decode("utf-8", "replace")) + 1
                    raise AnnotationError(f"{path}:{n}: not UTF-8 text (byte 0x{part[e.start]:02x} at column "
                                          f"{column}); re-save it as UTF-8") from None
                if "\0" in text:
                    raise AnnotationError(f"{path}:{n}: NUL bytes: UTF-16 or binary, not UTF-8 text; "
                                          "re-save it as UTF-8")
                yield n, text


def iter_csv_rows(path: str, what: str = "annotation file") -> Iterator[Tuple[int, List[str]]]:
    """``(line number, stripped comma fields)`` of a CSV file such as the official Kinetics CSVs,
    read by :func:`iter_lines` (same line cap, encoding checks and ``file:line`` errors); a blank
    line gives ``[]``. A quoted field cannot span lines (the official CSVs have none)."""
    for n, text in iter_lines(path, what):
        yield n, _csv_fields(text, f"{path}:{n}")


_SECONDS = re.compile(r"\d+(\.\d+)?")  # time_start / time_end as written (whole seconds: checked when read)
_SPLIT = re.compile(r"[A-Za-z][\w-]*")  # train, val, validate, test
_YOUTUBE_ID = re.compile(r"[\w-]+")


def _kinetics_row_problem(fields: Sequence[str]) -> str:
    """"" when ``fields`` (one line's comma fields) are a header-less official Kinetics row, else why not.

    ``label,youtube_id,time_start,time_end,split[,is_cc]`` or ``youtube_id,time_start,time_end,split``:
    an id, two numbers, a split name and is_cc 0 or 1, so no field but the label has spaces. A video
    list line has a space or TAB before its label (``a,b,c,d.mp4 3``), so it never fits.
    """
    if len(fields) not in (4, 5, 6):
        return f"{len(fields)} comma-separated fields, not 4 to 6"
    names = (["youtube_id", "time_start", "time_end", "split"] if len(fields) == 4 else
             ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
    col = dict(zip(names, fields))
    checks = [("youtube_id", _YOUTUBE_ID.fullmatch(col["youtube_id"]), "an id"),
              ("time_start", _SECONDS.fullmatch(col["time_start"]), "a number"),
              ("time_end", _SECONDS.fullmatch(col["time_end"]), "a number"),
              ("split", _SPLIT.fullmatch(col["split"]), "a split name"),
              ("is_cc", col.get("is_cc", "0") in ("0", "1"), "0 or 1")]
    for name, ok, expected in checks:
        if not ok:
            return f"{name} = {col[name]!r} is not {expected}"
    return ""


def detect_format(lines: Iterable[str], path: str = "<annotations>") -> str:
    """The format of an annotation file, from its first entry line.

    ``kinetics_csv`` for the official header (``youtube_id`` among its comma fields) or a row
    that fits the official columns exactly (``_kinetics_row_problem``); ``slowfast`` (a video
    list) otherwise. A line that could be either (4 to 6 comma fields with no space or TAB after
    the first comma that do not fit the official columns: a path with commas and no label, or a
    broken CSV row) is an error asking for ``DATA.FORMAT``, which decides without detection.
    """
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _csv_fields(line, f"{path}:{n}")
        comma_row = not any(c.isspace() for f in fields[1:] for c in f)  # spaces only in the label
        if comma_row and "youtube_id" in [f.lower() for f in fields]:
            return "kinetics_csv"
        problem = _kinetics_row_problem(fields)
        if not problem:
            return "kinetics_csv"  # header-less official CSV
        if comma_row and len(fields) in (4, 5, 6):
            raise AnnotationError(
                f"{path}:{n}: cannot tell the format of {line!r}: not an official Kinetics CSV row "
                f"({problem}), and as a video list line it would be a path with commas and no label; "
                "set DATA.FORMAT (kinetics_csv, slowfast or mmaction)")
        return "slowfast"
    raise AnnotationError(f"{path}: annotation file has no entries")


class _Rows:
    """The rows of one file as they are read. ``table()`` checks repeats: a video listed again with
    another label is an error naming both lines; repeats with the same label are kept (one warning)."""

    def __init__(self, path: str):
        self.file = path
        self.paths: List[str] = []
        self.labels: List[int] = []
        self.lines: List[int] = []

    def add(self, video: str, label: int, n: int) -> None:
        self.paths.append(video)
        self.labels.append(label)
        self.lines.append(n)

    def table(self) -> VideoRecords:
        first = dict(zip(reversed(self.paths), range(len(self.paths) - 1, -1, -1)))  # video -> its first row
        if len(first) < len(self.paths):  # some video repeats: find them in file order
            repeats = [(first[v], j) for j, v in enumerate(self.paths) if first[v] != j]
            for i, j in repeats:
                if self.labels[i] != self.labels[j]:
                    raise AnnotationError(
                        f"{self.file}:{self.lines[j]}: {self.paths[j]} is listed again with label {self.labels[j]}; "
                        f"line {self.lines[i]} gives it label {self.labels[i]} (remove one of the two)")
            i, j = repeats[0]
            logger.warning("%s: %d line(s) repeat a video with the same label (first: %s, lines %d and %d); "
                           "each repeat is one more row (sampled and tested as often)",
                           self.file, len(repeats), self.paths[j], self.lines[i], self.lines[j])
        return VideoRecords(self.paths, self.labels, self.lines)


class _Labeler:
    """Label text -> class index, with range checks and file:line errors."""

    def __init__(self, names: Optional[List[str]], num_classes: Optional[int], map_path: str):
        self.names = names
        self.keys = {class_key(n): i for i, n in enumerate(names)} if names else {}
        self.num_classes = num_classes
        self.map_path = map_path
        limit = [x for x in (num_classes, len(names) if names else None) if x is not None]
        self.limit = min(limit) if limit else None
        self._seen: Dict[str, int] = {}  # label text -> index (a split has few distinct labels)

    def __call__(self, text: str, where: str) -> int:
        label = self._seen.get(text)
        if label is None:
            label = self._seen[text] = self._parse(text, where)  # only valid labels are remembered
        return label

    def _parse(self, text: str, where: str) -> int:
        t = text.strip()
        if re.fullmatch(r"[+-]?\d+", t):
            label = int(t)
            if label == -1:
                return -1  # unknown (e.g. an unlabelled test split)
        else:
            if not self.names:
                raise AnnotationError(f"{where}: label {t!r} is not a class index and no label map is set "
                                      "(DATA.LABEL_MAP) to look class names up in")
            key = class_key(t)
            if key not in self.keys:
                close = [n for k, n in ((k, self.names[i]) for k, i in self.keys.items())
                         if key and (key in k or k in key)][:3]
                hint = f"; similar: {close}" if close else ""
                raise AnnotationError(f"{where}: unknown class name {t!r} (not in label map {self.map_path}"
                                      f"{hint})")
            label = self.keys[key]
        if label < 0 or (self.limit is not None and label >= self.limit):
            raise AnnotationError(f"{where}: label {label} out of range 0..{self.limit - 1 if self.limit else '?'}"
                                  f" (MODEL.NUM_CLASSES = {self.num_classes}"
                                  f"{', label map has %d classes' % len(self.names) if self.names else ''})")
        return label


def _parse_list(path: str, lines: Iterable[Tuple[int, str]], prefix: str, labeler: _Labeler, sep: str = "",
                fmt: str = "slowfast", explicit: bool = True) -> VideoRecords:
    """PySlowFast / mmaction2 video lists: ``path label``, and ``path`` alone (label unknown, -1:
    test lists). PySlowFast's ``path fn label`` (fn an integer, ignored) with ``fmt="slowfast"``
    given explicitly: in auto mode such a line could also be an mmaction2 multi-label line, so it
    is an error that says which format to set. ``sep``: the field separator
    (DATA.PATH_LABEL_SEPARATOR; "" = whitespace, or TAB when a line has one)."""
    join = _joiner(prefix)
    rows = _Rows(path)
    for n, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if sep == "\t" or (not sep and "\t" in line):
            fields = [x for x in raw.split("\t") if x.strip()]  # TAB-separated: the path keeps every character
            fields[1:] = [x.strip() for x in fields[1:]]
        elif sep:
            fields = [x.strip() for x in line.split(sep)]
        elif '"' in line:
            fields = [x for x in next(csv.reader([line], delimiter=" ", quotechar='"', skipinitialspace=True)) if x]
        else:
            fields = line.split()
        if len(fields) == 3 and re.fullmatch(r"\d+", fields[1]) and fmt == "slowfast":
            if not explicit:
                raise AnnotationError(
                    f"{where}: 3 fields {line!r}: PySlowFast's 'path fn label' or an mmaction2 multi-label "
                    "line? Set DATA.FORMAT slowfast to read it as 'path fn label' (multi-label lists are "
                    "not supported)")
            fields = [fields[0], fields[2]]  # PySlowFast "path fn label"
        if len(fields) == 1:
            rows.add(join(fields[0]), -1, n)
            continue
        if len(fields) != 2 or not fields[0]:
            raise AnnotationError(
                f"{where}: expected 'path label' (or 'path', or 'path N label'), got {len(fields)} fields: "
                f"{line!r} (multi-label lines and raw-frame lists are not supported; a path with spaces needs "
                "a TAB before the label, quotes, or DATA.PATH_LABEL_SEPARATOR)")
        rows.add(join(fields[0]), labeler(fields[1], where), n)
    return rows.table()


def _int_field(text: str, name: str, where: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: {name} = {text!r} is not a number of seconds") from None
    if v != int(v) or v < 0:
        raise AnnotationError(f"{where}: {name} = {text!r} is not a whole, non-negative number of seconds")
    return int(v)


def _class_folders(prefix: str) -> Dict[str, str]:
    """class_key -> sub-folder name, for the folders directly under ``prefix``."""
    try:
        entries = path_manager.ls(prefix)
    except Exception:
        return {}
    out = {}
    for e in entries:
        name = os.path.basename(e.rstrip("/"))
        if path_manager.isdir(_join(prefix, name)):
            out[class_key(name)] = name
    return out


def _csv_fields(text: str, where: str) -> List[str]:
    """The comma-separated fields of one line (double quotes as in the official CSV), stripped."""
    try:
        return [c.strip() for c in next(csv.reader([text]), [])]
    except csv.Error as e:
        raise AnnotationError(f"{where}: not a CSV line ({e}): {text[:200]!r}") from None


def _parse_kinetics(path: str, lines: Iterable[Tuple[int, str]], prefix: str, labeler: _Labeler,
                    layout: str) -> VideoRecords:
    rows = ((n, _csv_fields(text, f"{path}:{n}")) for n, text in lines)
    rows = ((n, row) for n, row in rows if any(row) and not row[0].startswith("#"))
    first = next(rows, None)
    if first is None:
        return VideoRecords([], [], [])
    n, row = first
    if "youtube_id" in [c.lower() for c in row]:
        header = [c.lower() for c in row]
        missing = {"youtube_id", "time_start", "time_end"} - set(header)
        if missing:
            raise AnnotationError(f"{path}:{n}: Kinetics CSV header lacks {sorted(missing)}: {row}")
    else:  # header-less: by field count
        if len(row) not in (4, 5, 6):
            raise AnnotationError(f"{path}:{n}: expected the official Kinetics CSV columns "
                                  "label,youtube_id,time_start,time_end,split[,is_cc] (or youtube_id,time_start,"
                                  f"time_end,split for the test split), got {len(row)} fields: {row}")
        header = (["youtube_id", "time_start", "time_end", "split"] if len(row) == 4 else
                  ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"][:len(row)])
        rows = itertools.chain([first], rows)
    col = {c: i for i, c in enumerate(header)}
    has_label = "label" in col
    if layout not in CLIP_LAYOUTS:
        raise AnnotationError(f"{path}: clip layout {layout!r} is not one of {', '.join(CLIP_LAYOUTS)}")
    folders: Dict[str, str] = {}
    if has_label and layout in ("auto", "class"):
        folders = _class_folders(prefix)
        if layout == "auto":
            keys = set(labeler.keys)
            layout = "class" if any(k in keys for k in folders) else "flat"
    elif layout == "class":
        raise AnnotationError(f"{path}: DATA.CLIP_LAYOUT = 'class' but the CSV has no label column "
                              "(test split); use 'flat' or 'auto'")
    else:
        layout = "flat"
    join = _joiner(prefix)
    i_yid, i_ts, i_te, i_label = col["youtube_id"], col["time_start"], col["time_end"], col.get("label")
    out = _Rows(path)
    listed: Dict[str, Dict[str, str]] = {}  # clip folder (relative) -> its videos, listed once
    for n, row in rows:
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise AnnotationError(f"{where}: expected {len(header)} fields ({','.join(header)}), "
                                  f"got {len(row)}: {row}")
        yid = row[i_yid]
        if not yid:
            raise AnnotationError(f"{where}: empty youtube_id")
        ts = _int_field(row[i_ts], "time_start", where)
        te = _int_field(row[i_te], "time_end", where)
        stem = kinetics_clip_name(yid, ts, te, ext="")
        label, folder = -1, ""
        if has_label:
            text = row[i_label]
            label = labeler(text, where)
            if layout == "class":
                folder = (folders.get(class_key(text)) or text.replace(" ", "_")) + "/"
        if folder not in listed:
            listed[folder] = _video_files((_join(prefix, folder) if folder else prefix) or ".")
        name = listed[folder].get(stem, stem + ".mp4")  # .mp4: not there (the decoder reports it missing)
        out.add(join(folder + name), label, n)
    return out.table()


def load_annotations(path: str, fmt: str = "auto", path_prefix: str = "", label_map: str = "",
                     num_classes: Optional[int] = None, clip_layout: str = "auto", sep: str = "",
                     require_labels: bool = False) -> VideoRecords:
    """Read one split's annotation file.

    Args:
        path: the annotation file (any iopath location).
        fmt: "auto" | "slowfast" | "mmaction" | "kinetics_csv" (DATA.FORMAT).
        path_prefix: folder joined to relative video paths (DATA.PATH_PREFIX); "" = the
            annotation file's folder.
        label_map: class-name file (DATA.LABEL_MAP); "" = labels must be indices, except
            for the official Kinetics CSV, which then uses the shipped 400-class map.
        num_classes: labels must be below this (MODEL.NUM_CLASSES).
        clip_layout: "auto" | "class" | "flat" (DATA.CLIP_LAYOUT, official CSV only).
        sep: field separator of video lists (DATA.PATH_LABEL_SEPARATOR; "" = whitespace/TAB).
        require_labels: every video needs a label (training): an unknown one (-1, a path-only
            line, the official test split) is an error naming the file and line.
    """
    if fmt not in FORMATS:
        raise AnnotationError(f"{path}: format {fmt!r} is not one of {FORMATS}")
    lines = iter_lines(path)
    head = []  # the lines up to the first entry, which tells the format
    for n, text in lines:
        head.append((n, text))
        if text.strip() and not text.strip().startswith("#"):
            break
    explicit = fmt != "auto"
    if fmt == "auto":
        fmt = detect_format([text for _, text in head], path)
    lines = itertools.chain(head, lines)
    if fmt == "kinetics_csv" and not label_map:
        label_map = DEFAULT_KINETICS400_LABEL_MAP
    names = read_label_map(label_map) if label_map else None
    labeler = _Labeler(names, num_classes, label_map)
    prefix = path_prefix or os.path.dirname(path)
    if fmt == "kinetics_csv":
        records = _parse_kinetics(path, lines, prefix, labeler, clip_layout)
    else:
        records = _parse_list(path, lines, prefix, labeler, sep, fmt, explicit)
    if not records:
        raise AnnotationError(f"{path}: annotation file has no entries")
    if require_labels:
        unlabelled = np.flatnonzero(records.labels < 0)
        if len(unlabelled):
            first = records[int(unlabelled[0])]
            raise AnnotationError(f"{path}:{first.line}: {first.path} has no label (-1 or none), "
                                  f"as do {len(unlabelled) - 1} more lines; training needs a class for every video")
    return records
