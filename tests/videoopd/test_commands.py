"""What a user copies: the console scripts beside ``python -m``, and the example configs in
configs/ (every key an option of its command, every value valid)."""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from videoopd import eval as E
from videoopd import sft as S
from videoopd import train as T
from videoopd.training.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "sft", "eval", "compare", "synthetic", "tiny", "plan")


def test_console_scripts_name_each_command():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("videoopd-")}
    assert scripts == {f"videoopd-{c}": f"videoopd.{c}:main" for c in COMMANDS}
    script = Path(sys.executable).with_name("videoopd-eval")
    if script.is_file():  # installed into this environment's bin/
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "--prompt-style" in result.stdout


@pytest.mark.parametrize(
    "name, config_class, command",
    [("train.yaml", T.TrainConfig, T), ("sft.yaml", S.SFTConfig, S), ("eval.yaml", E.EvalConfig, E)],
)
def test_example_configs_parse(name, config_class, command):
    cfg = parse_config(
        config_class,
        ["--config", str(ROOT / "configs" / name)],
        prog=name,
        description="",
        command_defaults=getattr(command, "COMMAND_DEFAULTS", None),
    )
    assert isinstance(cfg, config_class)
