"""fused_policy_gradient_loss (GRPO's clipped loss from hidden states, forward + backward) against naive
PyTorch, the unfused ours (token_logprobs + policy_gradient_loss) and Liger-Kernel's fused linear GRPO loss.

Cases come from bench/conftest.py (grid, ops and providers chosen on the command line).
"""

from bench.runner import run_accuracy_case, run_speed_case

KERNEL = "policy_gradient_loss"


def test_speed_and_memory(speed_case, bench_context, benchmark):
    run_speed_case(speed_case, bench_context, benchmark)


def test_max_error_vs_float64(accuracy_case, bench_context):
    run_accuracy_case(accuracy_case, bench_context)
