"""Fixtures of the 2-process launches (test_distributed.py, test_faults.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 synthetic videos of one event each: with 2 prompts a step, steps 1-2 are one epoch and
    step 3 starts the next."""
    from videoopd.data.synthetic import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("launch_data"),
        num_videos=4,
        seed=0,
        duration=8.0,
        fps=4,
        height=64,
        width=96,
        events_per_video=1,
    )
