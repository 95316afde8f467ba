"""Count, in eval prediction files of two-event videos, the answers nearer the queried event than
the other event of the same video (IoU with each span), and the videos whose two queries got the
same answer (a model that ignores the query):

    python docs/results/2026-11-26-compare-demo-two-events/query_reading.py RUN/eval_step*.predictions.jsonl
"""

import collections
import json
import sys


def iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


for path in sys.argv[1:]:
    by_video = collections.defaultdict(list)
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        by_video[row["video"]].append(row)
    counts = collections.Counter()
    for rows in by_video.values():
        if len(rows) != 2:
            continue
        counts["same answer for both queries"] += rows[0]["answer"] == rows[1]["answer"]
        for mine, other in (rows, rows[::-1]):
            if mine["pred"] is None:
                counts["unparsed"] += 1
                continue
            to_mine, to_other = iou(mine["pred"], mine["gt"]), iou(mine["pred"], other["gt"])
            counts["queried" if to_mine > to_other else "other" if to_other > to_mine else "tie"] += 1
    print(f"{path}: {dict(counts)}")
