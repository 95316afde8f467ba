"""token_logprobs (teacher: forward only; student: forward + backward) against naive PyTorch, torch.compile
and Cut Cross-Entropy.

Cases come from bench/conftest.py (grid, ops and providers chosen on the command line).
"""

from bench.runner import run_accuracy_case, run_speed_case

KERNEL = "token_logprobs"


def test_speed_and_memory(speed_case, bench_context, benchmark):
    run_speed_case(speed_case, bench_context, benchmark)


def test_max_error_vs_float64(accuracy_case, bench_context):
    run_accuracy_case(accuracy_case, bench_context)
