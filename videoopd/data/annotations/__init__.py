"""Temporal-video-grounding annotations: one record type, a reader per format, explicit validation.

Modules: :mod:`~videoopd.data.annotations.records` (the record types),
:mod:`~videoopd.data.annotations.text` (UTF-8 lines, JSON, numbers, the durations CSV), one
module per format (``charades``, ``activitynet``, ``timelens``, ``jsonl``, ``qvhighlights``,
``tvgbench``, ``swift``), :mod:`~videoopd.data.annotations.validation` (the rules below) and
:mod:`~videoopd.data.annotations.loader` (detection, the ``{format: reader}`` table
:data:`READERS`, :func:`load_annotations`); :mod:`~videoopd.data.annotations.convert` writes a
set in another format (``python -m videoopd.data convert``).

Formats (``format=`` name, what one sample looks like):

- ``charades``: Charades-STA text, one query a line: ``AO8RW 0.0 6.9##a person puts a book away.``
  Durations come from ``durations=`` (a Charades CSV with ``id`` and ``length`` or
  ``duration`` columns) or, for videos not in it, are probed from the video file.
- ``activitynet``: ActivityNet Captions JSON ``{vid: {duration, timestamps, sentences}}``.
- ``timelens_bench``: TimeLens-Bench JSON ``{vid: {duration, spans, queries}}``.
- ``timelens_100k``: TimeLens-100K JSONL, a line per video
  ``{source, video_path, duration, events: [{query, span}]}``.
- ``jsonl``: plain JSONL, a line per query ``{video, query, start, end, duration}``
  (optional ``id``, ``source``, and ``windows`` for a query with several: ``start``/``end``
  are then its first, as :func:`write_jsonl_records` writes them).
- ``qvhighlights``: QVHighlights (moment_detr's ``highlight_{train,val}_release.jsonl``), a
  line per query ``{qid, query, duration, vid, relevant_windows: [[s, e], ...], ...}``;
  the video is ``{vid}.mp4`` under ``video_root``. A query may have several windows.
- ``tvgbench``: Time-R1's TVGBench, a JSON list of ``{path, question, answer: "13.4-28.1",
  duration, dataset_name, ...}``; the video is ``path`` (relative paths against
  ``video_root``: for the file as published, the folder its ``./dataset/...`` paths start
  from), the source ``dataset_name``.
- ``swift``: the ms-swift / LLaMA-Factory video JSONL, a line per query
  ``{messages: [system?, user "<video>...", assistant], videos: [path]}`` (or ShareGPT's
  ``conversations``); the query from a known prompt template, else the user turn kept as
  written; the span from ``start``/``end`` when present, else the assistant turn (see
  :mod:`~videoopd.data.annotations.swift`).

Queries with several windows follow ``multi_span=``: ``"auto"`` (the default: the format's own
rule, ``"any"`` for QVHighlights, whose moment_detr evaluation scores every window, ``"skip"``
for the others), ``"skip"`` (reported as ``multi_span`` and skipped), ``"first"`` (the first
window), ``"longest"`` (the longest, the first of equals) or ``"any"`` (all kept in
:attr:`GroundingRecord.windows`: a prediction scores its best IoU against any window; ``span``
is the first). Every such query is counted in :attr:`LoadSummary.multi_window`, whatever the
policy. A zero-length span (start == end: Ego4D-NLQ items of TVGBench) is a
``zero_length_span``, skipped, or kept with ``zero_length="keep"`` (metrics then score it by
the protocol's rule). A span end past the duration by float noise (ActivityNet's
95.03999999999999 against 95.04: at most ``FLOAT_NOISE_S``) is within the video, not reported.

``format="auto"`` detects the format from the file's content.

Files are UTF-8; a leading byte-order mark is ignored. A line that is not valid UTF-8 is a
``bad_encoding`` issue (the rest of the file is kept); in a whole-file JSON format the
document cannot be read without it, so the issue names its line and column. A file where
nothing was kept and some of it is not UTF-8 (a binary file, or a JSON document with a bad
byte) raises :class:`AnnotationError` ("no valid records") naming the file.

Video paths are resolved against ``video_root`` (default: the annotation file's folder).
A bare video id (Charades, ActivityNet, TimeLens-Bench) is tried with the extensions in
``VIDEO_EXTENSIONS``; for ActivityNet ids the ``v_`` prefix is also tried without.

Validation rules. Every problem is reported as a :class:`DataIssue` naming the file and the
line (or JSON key), counted in the :class:`LoadSummary`, logged, and then handled as below;
with ``strict=True`` the first problem raises :class:`AnnotationError` instead.

====================  ==========================================================  =========
kind                  condition                                                   action
====================  ==========================================================  =========
``bad_encoding``      a line (a JSON document) that is not valid UTF-8            skipped
``malformed``         unparsable line/JSON, missing field, non-numeric time       skipped
``empty_query``       query missing or only whitespace                            skipped
``multi_span``        more than one span for one query, ``multi_span="skip"``     skipped
``inverted_span``     start > end                                                 skipped
``zero_length_span``  start == end (``zero_length="keep"``: kept)                 skipped
``missing_video``     the video file does not exist (``check_videos=True``)       skipped
``bad_duration``      duration missing/non-positive and not probeable             skipped
                      (probeable: replaced by the probed duration)                probed
``span_out_of_range`` start < 0 or end > duration, ``span_policy="clip"``:        clipped
                      clipped to [0, duration]; skipped if nothing is left, or
                      always with ``span_policy="skip"``                          skipped
``duplicate_id``      an id already loaded from this file                         skipped
====================  ==========================================================  =========

Two more are found when a record's video is decoded (:func:`video_duration_issue`, called by
:class:`videoopd.data.datasets.GroundingVideoDataset` for training and evaluation; the loader
only opens a video whose duration it must probe). They name the annotation's file and line
through :attr:`GroundingRecord.annotation_file` / ``annotation_location``:

====================  ==========================================================  =========
``span_beyond_video`` span end more than ``SPAN_END_SLACK_S`` (1 s) past the       kept
                      decoded video's duration (frames read / fps)
``duration_mismatch`` annotated duration off the decoded one by more than          kept
                      max(``DURATION_TOLERANCE_S`` (1 s), ``DURATION_TOLERANCE_FRACTION``
                      (5%) of it)
====================  ==========================================================  =========

Such records are kept, not skipped: they are reported (logged once per record), counted by
the dataset, carried in the batch (``data_issues``) and flagged in evaluation rows, so that
a benchmark's denominator does not change behind the user's back. The slack absorbs frame
rounding and container/stream duration differences (well under a second); the duration
tolerance absorbs rounded durations in annotation tables and re-encoded downloads.
"""

from videoopd.data.annotations.jsonl import write_jsonl_records

# FORMATS, READERS and the policies are the library's own choice lists (the options', the tests')
from videoopd.data.annotations.loader import FORMATS as FORMATS
from videoopd.data.annotations.loader import READERS as READERS
from videoopd.data.annotations.loader import detect_format, load_annotations
from videoopd.data.annotations.records import AnnotationError, DataIssue, GroundingRecord, LoadResult, LoadSummary
from videoopd.data.annotations.swift import write_swift_records
from videoopd.data.annotations.text import read_durations_csv
from videoopd.data.annotations.validation import MULTI_SPAN_POLICIES as MULTI_SPAN_POLICIES
from videoopd.data.annotations.validation import VIDEO_EXTENSIONS as VIDEO_EXTENSIONS
from videoopd.data.annotations.validation import ZERO_LENGTH_POLICIES as ZERO_LENGTH_POLICIES
from videoopd.data.annotations.validation import video_duration_issue

__all__ = [
    "AnnotationError",
    "DataIssue",
    "GroundingRecord",
    "LoadResult",
    "LoadSummary",
    "detect_format",
    "load_annotations",
    "read_durations_csv",
    "video_duration_issue",
    "write_jsonl_records",
    "write_swift_records",
]
