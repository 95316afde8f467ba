"""Reverse KL (steps 1-20 -> 181-200), held-out mIoU per evaluation and the lowest 10-step parse rate
of each metrics.jsonl given: python summarize.py *.metrics.jsonl"""

import json
import sys

for name in sys.argv[1:]:
    rows = [json.loads(l) for l in open(name)]
    st = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "eval/mIoU" in r]
    kl = [r["reverse_kl"] for r in st]
    a, b = sum(kl[:20]) / 20, sum(kl[-20:]) / 20
    parsed = [r.get("parsed_rate") for r in st]
    mp = min(sum(parsed[i : i + 10]) / 10 for i in range(0, 200, 10)) if parsed[0] is not None else None
    print(
        f"{name}: KL {a:.3f} -> {b:.3f} ({(b - a) / a * 100:+.0f}%) mIoU "
        + " / ".join(f"{e['eval/mIoU']:.1f}" for e in ev),
        "min parsed/10",
        mp,
    )
