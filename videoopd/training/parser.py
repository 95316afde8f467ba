"""The options' parser: transformers' HfArgumentParser over the option dataclasses, with --config YAML and
--preset as TRL's TrlParser does, and the renamed spellings refused with their new names."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from transformers import HfArgumentParser

from videoopd.training.option_types import ConfigError, base_type, coerce, describe_bounds, field_types, flag_name

__all__: list[str] = []  # nothing here is promised: docs/api.md

T = TypeVar("T")


# Options renamed to the HF Trainer / TRL names (old name -> new name(s); the one the command has applies). An old
# spelling, as a flag or a YAML key, is refused with the new name rather than silently ignored.
RENAMED: dict[str, tuple[str, ...]] = {
    "lr": ("learning_rate",),
    "lr_schedule": ("lr_scheduler_type",),
    "batch_size": ("per_device_train_batch_size", "per_device_eval_batch_size"),
    "grad_accum": ("gradient_accumulation_steps",),
    "eval_every": ("eval_steps",),
    "eval_before": ("eval_on_start",),
    "eval_batch_size": ("per_device_eval_batch_size",),
    "save_every": ("save_steps",),
    "keep_checkpoints": ("save_total_limit",),
    "resume": ("resume_from_checkpoint",),
    "lora_targets": ("lora_target_modules",),
    "clip_eps": ("epsilon",),
    "num_workers": ("dataloader_num_workers",),
}
# The presets (``--preset NAME``): videoopd/presets/NAME.yaml, one file each, installed with the
# package (a wheel has no repository's configs/ beside it).
PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def preset_names() -> tuple[str, ...]:
    """The presets ``--preset`` offers: the YAML files of :data:`PRESET_DIR`."""
    return tuple(sorted(path.stem for path in PRESET_DIR.glob("*.yaml")))


class OneLineErrorParser(HfArgumentParser):
    """HfArgumentParser whose command-line errors (an unknown choice, a value of the wrong type)
    are ConfigErrors, which the command reports in one line with exit status 2 (:func:`fail`), as
    it does every other bad input, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _group_of(config_class: type) -> dict[str, str]:
    """{field: the title of its option group: the first docstring line of the dataclass that
    declares it (groups of one title share a section of ``--help``)}."""
    groups: dict[str, str] = {}
    for cls in config_class.__mro__:
        for name in cls.__dict__.get("__annotations__", {}):
            if name not in groups and dataclasses.is_dataclass(cls):
                groups[name] = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return groups


def _help(f: dataclasses.Field, kind: type) -> str:
    """The field's help with its bounds, and its default as the parser holds it when ``--help``
    is printed (the command's, the preset's or the YAML's): argparse fills ``%(default)s``.
    Where the text says its default itself, in a closing ``(default ...)``, that is kept; a field
    default of None is left unsaid (the text says what leaving the option out means)."""
    text = f.metadata["help"].replace("%", "%%") + ("; required" if f.metadata.get("required") else "")
    bounds = f.metadata.get("bounds")
    own_default = "(default" in text and text.endswith(")")
    if bounds:  # said before a closing "(default ...)"
        head, paren, tail = text.rpartition(" (default") if own_default else (text, "", "")
        text = f"{head} [{describe_bounds(bounds, kind)}]{paren}{tail}"
    return text if own_default or f.default is None else f"{text} (default: %(default)s)"


def _sections(config_class: type) -> list[type]:
    """HfArgumentParser gives each dataclass it is handed its own ``--help`` section (its
    ``_argument_group_name``); an option class is composed of group mixins, so it is handed one
    dataclass per group title, of the fields declared under it, with only what argparse takes
    (help, aliases) as their metadata; bounds and the rest are checked by ``config_class``."""
    hints, titles = field_types(config_class), _group_of(config_class)
    sections: dict[str, list[tuple[str, Any, Any]]] = {}
    for f in dataclasses.fields(config_class):
        kind, _ = base_type(hints[f.name])
        metadata = {"help": _help(f, kind), "aliases": list(f.metadata.get("aliases", ()))}
        sections.setdefault(titles[f.name], []).append(
            (f.name, hints[f.name], field(default=f.default, metadata=metadata))
        )
    return [
        dataclasses.make_dataclass("Section", fields, namespace={"_argument_group_name": title})
        for title, fields in sections.items()
    ]


def refuse_renamed(names: Sequence[str], known: Sequence[str], where: str) -> None:
    """A ConfigError naming the new flag when one of ``names`` is an old spelling (:data:`RENAMED`)."""
    for name in names:
        new = [n for n in RENAMED.get(name, ()) if n in known]
        if new:
            raise ConfigError(
                f"{where}{flag_name(name)} was renamed {flag_name(new[0])} (the HF Trainer / TRL "
                "name; see docs/options.md)"
            )


def given_flags(argv: Sequence[str], config_class: type) -> set[str]:
    """The options of ``config_class`` that ``argv`` gives, in any of their spellings."""
    spelt: dict[str, str] = {}
    for f in dataclasses.fields(config_class):
        for name in (f.name, f"no_{f.name}"):
            spelt["--" + name] = spelt["--" + name.replace("_", "-")] = f.name
        spelt.update(dict.fromkeys(f.metadata.get("aliases", ()), f.name))
    return {spelt[arg.split("=", 1)[0]] for arg in argv if arg.split("=", 1)[0] in spelt}


def read_yaml_options(path: Path, config_class: type) -> dict[str, Any]:
    """The options of a ``--config`` or preset YAML file (keys with ``_`` or ``-``, and
    ``preset``), each typed as its option (strings as flags are: ``"false"`` is False); errors
    name the file."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
    hints = field_types(config_class)
    values = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name != "preset":
            refuse_renamed([name], list(hints), f"{path}: ")
            if name not in hints:
                raise ConfigError(f"{path}: unknown option {key!r}")
            try:
                value = coerce(flag_name(name), base_type(hints[name])[0], value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        values[name] = value
    return values


def load_preset(name: str, config_class: type) -> dict[str, Any]:
    """The options of preset ``name`` (``videoopd/presets/NAME.yaml``)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose from {list(preset_names())} (files in {PRESET_DIR})")
    return read_yaml_options(PRESET_DIR / f"{name}.yaml", config_class)


def parse_config(
    config_class: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    presets: bool = False,
    preset_help: str = "",
    command_defaults: Mapping[str, Any] | None = None,
    default_preset: Callable[[Any], str | None] | None = None,
    rest: list[str] | None = None,
    config_file: bool = True,
) -> T:
    """Parse flags, YAML and preset into ``config_class`` with one precedence rule: field
    defaults < ``command_defaults`` < ``--preset`` < ``--config`` YAML < flags.

    The flags are transformers' ``HfArgumentParser``'s (``--name_with_underscores`` or
    ``--name-with-dashes``; a boolean takes true/false, alone means true, and one that defaults
    to true also has ``--no_name``). As TRL's ``TrlParser`` does, the YAML's (and the preset's)
    values become the parser's defaults, so that a flag given overrides them. ``default_preset``
    (given the config parsed without a preset) names the preset used when none is chosen. With
    ``rest`` (a list), flags that are not options of ``config_class`` are appended to it instead
    of refused (a command that passes them on); ``config_file=False``: no ``--config`` (it is
    passed on too). The chosen preset (or None) is recorded as ``cfg.preset``. Raises
    ConfigError on a bad value or combination (the dataclass's own checks)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    # --config and --preset are read first: their values are the defaults of the full parse
    first = OneLineErrorParser(add_help=False, allow_abbrev=False)
    if config_file:
        first.add_argument("--config")
    if presets:
        first.add_argument("--preset")
    files, _ = first.parse_known_args(argv)
    file_values = read_yaml_options(Path(files.config), config_class) if getattr(files, "config", None) else {}
    preset = getattr(files, "preset", None) or file_values.pop("preset", None)

    def parse(preset: str | None) -> T:
        usage = "%(prog)s" + (" [--preset NAME]" if presets else "") + (" [--config YAML]" if config_file else "")
        parser = OneLineErrorParser(
            _sections(config_class),
            prog=prog,
            usage=usage + " [options]",
            allow_abbrev=False,
            formatter_class=argparse.HelpFormatter,
            description=description
            + (
                " Precedence: defaults < " + ("--preset < " if presets else "") + "--config YAML < flags."
                if config_file
                else ""
            ),
        )
        if config_file:
            parser.add_argument("--config", help="YAML file of options (keys as below, with _ or -)")
        if presets:
            parser.add_argument("--preset", choices=preset_names(), help=preset_help)
        parser.set_defaults(
            **{
                **(command_defaults or {}),
                **(load_preset(preset, config_class) if preset is not None else {}),
                **file_values,
            }
        )
        *sections, unknown = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False
        )
        flags = [arg[2:].split("=", 1)[0].replace("-", "_") for arg in unknown if arg.startswith("--")]
        refuse_renamed(flags, [f.name for f in dataclasses.fields(config_class)], "")
        if rest is None and unknown:
            raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}")
        values: dict[str, Any] = {}
        for section in sections:
            if dataclasses.is_dataclass(section):  # the last one is the namespace of --config/--preset
                values.update(vars(section))
        cfg = config_class(**values)
        cfg.preset = preset
        cfg.given = frozenset(file_values).union(given_flags(argv, config_class)) - {"preset"}
        if rest is not None:
            rest[:] = unknown
        return cfg

    cfg = parse(preset)
    if preset is None and default_preset is not None and default_preset(cfg) is not None:
        cfg = parse(default_preset(cfg))
    return cfg


def fail(prog: str, exc: BaseException) -> int:
    """Print a ConfigError (or another refusal) as the commands do: one line, exit status 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
