"""Plot the demo teacher's two SFT stages from the shipped training.json:
python docs/results/2026-11-26-demo-teacher-two-events/plot.py"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).resolve().parent
training = json.loads((here.parents[2] / "videoopd/demo/assets/demo_teacher/training.json").read_text())
first, second = training["stages"]
fig, (ax_miou, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
offset = first["teacher_step"]  # stage 2 starts from stage 1's teacher
for stage, start, label in (
    (first, 0, "stage 1 (one-event held-out)"),
    (second, offset, "stage 2 (two-event held-out)"),
):
    steps = sorted(int(s) for s in stage["heldout_by_step"])
    ax_miou.plot(
        [start + s for s in steps], [stage["heldout_by_step"][str(s)]["mIoU"] for s in steps], "o-", label=label
    )
    losses = stage["loss_mean_per_50_steps"]
    ax_loss.plot([start + 50 * (i + 1) for i in range(len(losses))], losses, label=label.split(" (")[0])
two = first["two_event_heldout_mIoU_by_step"]  # stage 1's in-run evaluations, on two-event videos
ax_miou.plot(
    [int(s) for s in two], list(two.values()), "s--", color="C0", alpha=0.6, label="stage 1 (two-event held-out)"
)
ax_miou.axvline(offset, color="grey", ls=":")
ax_miou.set(xlabel="SFT step (stage 2 counted from stage 1's teacher)", ylabel="held-out mIoU", ylim=(40, 101))
ax_loss.set(xlabel="SFT step", ylabel="answer-token NLL, mean of 50 steps", yscale="log")
for ax in (ax_miou, ax_loss):
    ax.legend()
    ax.grid(alpha=0.3)
fig.suptitle("demo teacher: SFT stage 1 (from scratch) and stage 2 (two-event videos)")
fig.tight_layout()
fig.savefig(here / "curves.png", dpi=110)
