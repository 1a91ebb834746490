"""Recipe settings, declared once as dataclasses: the command line, the settings file and `--config` come
from the fields.

    @dataclass
    class SegmentSettings(RecipeSettings):
        image_size: int = option(64, "training crop / evaluation size", positive_int, group="model")

    settings = parse_settings(SegmentSettings, argv, prog="segment.py", description="...")

Each field is an option `--image-size` (underscores become dashes) whose value is read by its check (a
function text -> value that raises `argparse.ArgumentTypeError` with what it expected). A bool that is off
by default is a flag (`--overwrite`); one that is on by default is turned off with `--no-NAME`
(`--no-progress`). `RecipeSettings` holds the options every recipe shares; a recipe's own settings class
adds its options and may give a shared one another default by declaring it again.

`--config FILE` (JSON or YAML: a mapping of setting names, with underscores or dashes, to values) sets the
defaults, the command line overrides them; every value in the file passes the same check as on the command
line. A run writes its resolved settings to `OUTPUT_DIR/settings.json` (`save_settings`), so
`--config OUTPUT_DIR/settings.json` reruns it. Errors are one line naming the option (or the file and the
setting) and what it expects, exit status 2.

The parser is written here rather than taken from `transformers.HfArgumentParser`: the checks (ranges, 'auto',
pairs) run on the command line and on the settings file alike, an unknown setting in a file is refused by
name, and every error is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
GROUPS = ("data", "model", "optimisation", "augmentation", "hardware", "run")
HIDDEN = "hidden"  # the group of options left out of --help (tests' hooks)
# settings that say where and how this run starts, not what it computes: never written to settings.json
NOT_SAVED = ("config", "overwrite", "resume", "allow_changed_config", "debug_record_ranks")


# --------------------------------------------------------------------------------------------------
# Checks: text -> value, or argparse.ArgumentTypeError saying what was expected
# --------------------------------------------------------------------------------------------------


def checked(cast, test, requirement: str):
    """A check: `cast(text)`, refused unless `test(value)`, with `requirement` in the message."""

    def parse(text):
        try:
            value = cast(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}")
        return value

    parse.__name__ = requirement
    return parse


def _int(text) -> int:
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise ValueError(text)
    return int(text)


def _float(text) -> float:
    if isinstance(text, bool):
        raise ValueError(text)
    return float(text)


integer = checked(_int, lambda v: True, "a whole number")
positive_int = checked(_int, lambda v: v >= 1, "a whole number >= 1")
nonnegative_int = checked(_int, lambda v: v >= 0, "a whole number >= 0")
positive_float = checked(_float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonnegative_float = checked(_float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = checked(_float, lambda v: 0 < v < 1, "a number between 0 and 1 (both excluded)")
probability = checked(_float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
below_one = checked(_float, lambda v: 0 <= v < 1, "a number from 0 up to 1 (1 excluded)")
up_to_one = checked(_float, lambda v: 0 < v <= 1, "a number above 0, at most 1")


def text(value) -> str:
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected text, got {value!r}")
    return value


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def pair(element, requirement: str, test=lambda lo, hi: lo <= hi):
    """A check of two numbers written 'lo,hi' (or a two-element list in a settings file) -> (lo, hi)."""

    def parse_pair(value):
        parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
        try:
            lo, hi = (element(part) for part in parts)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {value!r}") from None
        if not test(lo, hi):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {value!r}")
        return lo, hi

    parse_pair.__name__ = requirement
    return parse_pair


area_range = pair(float, "'lo,hi' with 0 < lo <= hi <= 1", lambda lo, hi: 0 < lo <= hi <= 1)  # a crop's share of the area


def dataset_option(builtin: str) -> Any:
    """The --dataset setting of a recipe whose built-in offline set is `builtin` (its default)."""
    return option(builtin, "anything datasets.load_dataset takes (Hub id, a folder of parquet/arrow/webdataset .tar/image "
                  f"files, a saved DatasetDict folder); '{builtin}' = built-in, offline", text, group="data")


def names(value) -> list[str]:
    """Two or more class names, 'a,b,c' (or a list in a settings file)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [str(item).strip() for item in items]
    if len(items) < 2 or not all(items):
        raise argparse.ArgumentTypeError(f"expected two or more comma-separated class names, got {value!r}")
    return items


def one_of(*choices: str):
    def parse(value):
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    parse.__name__ = f"one of {', '.join(choices)}"
    return parse


def or_auto(check):
    """`check`, or the word 'auto' (the recipe fills the value in)."""

    def parse(value):
        return AUTO if value == AUTO else check(value)

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def option(default: Any, help: str, check: Callable | None = None, *, group: str = "run") -> Any:
    """A settings field: its default, one line of help, its check (default: by the default's type), the
    --help group it is listed in."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "group": group})


# --------------------------------------------------------------------------------------------------
# The options every recipe shares
# --------------------------------------------------------------------------------------------------


@dataclass
class RecipeSettings:
    """The options of every recipe (a recipe's settings class adds its own)."""

    # data
    dataset: str = option(None, "anything datasets.load_dataset takes (Hub id, a folder of parquet/arrow/webdataset .tar/image "
                          "files, a saved DatasetDict folder); the default is the recipe's built-in offline set", text, group="data")
    dataset_config: str | None = option(None, "dataset configuration name", text, group="data")
    train_split: str | None = option(None, "the split to train on (default: 'train', else the first split not named "
                                     "validation/valid/val/test)", text, group="data")
    validation_fraction: float = option(0.1, "held out for validation (seeded) when the set has no validation split", fraction, group="data")
    max_train_samples: int | None = option(None, "use only the first N training examples", positive_int, group="data")
    max_eval_samples: int | None = option(None, "use only the first N validation examples (with --streaming: 1000 unless given)",
                                          positive_int, group="data")
    num_workers: int = option(0, "DataLoader worker processes", nonnegative_int, group="data")
    streaming: bool = option(False, "read the data as it is used (datasets streaming; each process reads its own shards); "
                             "needs --max-steps", group="data")
    shuffle_block: int = option(1000, "with --streaming: examples shuffled together in memory", positive_int, group="data")
    steps_per_epoch: int | None = option(None, "with --streaming: optimiser steps between evaluations and checkpoints "
                                         "(default: a tenth of --max-steps)", positive_int, group="data")
    # model
    model: str = option(None, "a preset (trained from scratch) or a checkpoint folder / Hub id", text, group="model")
    drop_path: float = option(0.1, "stochastic depth rate", or_auto(below_one), group="model")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory", group="model")
    compile: bool = option(False, "torch.compile the model (on x86 CPUs the eager step measured faster: BENCHMARKS.md)", group="model")
    # optimisation
    epochs: int = option(10, "training epochs", or_auto(positive_int), group="optimisation")
    max_steps: int | None = option(None, "stop after this many optimiser steps", positive_int, group="optimisation")
    max_minutes: float | None = option(None, "stop training after this many minutes (then evaluate and save)", positive_float,
                                       group="optimisation")
    batch_size: int = option(32, "examples per process per micro-batch", or_auto(positive_int), group="optimisation")
    grad_accum: int = option(1, "micro-batches per optimiser step", positive_int, group="optimisation")
    lr: float = option(1e-3, "peak learning rate of the last layers (AdamW)", or_auto(positive_float), group="optimisation")
    min_lr_ratio: float = option(0.01, "cosine floor, as a fraction of --lr", probability, group="optimisation")
    weight_decay: float = option(0.05, "AdamW weight decay (never on norms, biases, position tables)", or_auto(nonnegative_float),
                                 group="optimisation")
    layer_decay: float = option(1.0, "layer-wise lr decay per backbone block (1 = off)", or_auto(up_to_one), group="optimisation")
    warmup_steps: int | None = option(None, "linear warmup steps (default: --warmup-ratio of all steps)", nonnegative_int,
                                      group="optimisation")
    warmup_ratio: float = option(0.05, "linear warmup as a fraction of all steps", or_auto(below_one), group="optimisation")
    clip_grad: float = option(5.0, "gradient norm clipping (0 = off)", nonnegative_float, group="optimisation")
    ema_decay: float = option(0.0, "EMA of the weights, evaluated and saved (0 = off)", or_auto(below_one), group="optimisation")
    # hardware
    accelerator: str = option("auto", "cpu, cuda, mps, auto (under `lightning run` / `fabric run` the launcher's flags win)",
                              text, group="hardware")
    devices: str = option("auto", "devices per node (under torchrun / accelerate: from the launcher)", text, group="hardware")
    strategy: str = option("auto", "auto, ddp, fsdp (FSDP2: each Swin block sharded, CPU or GPU), or another of Lightning "
                           "Fabric's", text, group="hardware")
    num_nodes: int = option(1, "nodes", positive_int, group="hardware")
    precision: str = option(AUTO, "auto, 32-true, bf16-mixed, 16-mixed, ... (auto: accelerate's mixed precision if set, else "
                            "bf16-mixed where the device multiplies bf16 natively, else 32-true; the built-in runs: 32-true)",
                            text, group="hardware")
    cpu_threads: int | str = option(AUTO, "torch intra-op threads per process (0 = torch's default; auto: 1 for a built-in run's "
                                    "tiny model, else torch's default); OMP_NUM_THREADS set by you wins",
                                    or_auto(nonnegative_int), group="hardware")
    # run
    seed: int = option(0, "random seed", integer)
    deterministic: bool = option(False, "deterministic algorithms")
    output_dir: str = option(None, "the run's folder: model, card, settings.json, metrics, plots, logs, checkpoints", text)
    overwrite: bool = option(False, "train into a non-empty --output-dir (its old checkpoints are removed once the settings, "
                             "data and model are checked)")
    resume: bool = option(False, "continue from the newest readable checkpoint in --output-dir (an unreadable one is renamed "
                          "*.invalid and the one before it used)")
    allow_changed_config: str | None = option(None, "with --resume: settings that may differ from the checkpoint's run, "
                                              "comma-separated (e.g. lr,epochs; 'all')", text)
    config: str | None = option(None, "a settings file (JSON or YAML, e.g. a run's settings.json): its values are the "
                                "defaults, options given here override them", text)
    checkpoint_every: int | None = option(None, "also checkpoint every N optimiser steps (always at epoch ends)", positive_int)
    keep_checkpoints: int = option(2, "newest checkpoints kept (0 = all)", nonnegative_int)
    eval_every_epochs: int = option(1, "evaluate every N epochs (and at the end)", positive_int)
    log_every: int = option(10, "log the training loss every N steps (and check that it is finite)", positive_int)
    progress: bool = option(True, "a progress bar (off: plain lines instead)")
    push_to_hub: bool = option(False, "upload --output-dir to the Hub at the end (needs network and a token)")
    hub_model_id: str | None = option(None, "Hub repository for --push-to-hub", text)
    debug_record_ranks: str | None = option(None, "tests: a folder where each process writes what it saw", text, group=HIDDEN)

    def saved(self) -> dict:
        """The settings as settings.json holds them: every value that shapes the run."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if k not in NOT_SAVED}


# --------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------


class SettingsParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`error: argument --lr: expected ..., got 'nan' (see PROG --help)`,
    exit status 2); --help lists every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_of(field: dataclasses.Field) -> Callable:
    check = field.metadata.get("check")
    if check is not None:
        return check
    if isinstance(field.default, bool):
        return boolean
    raise TypeError(f"setting {field.name!r} needs a check")  # (a recipe's settings class is incomplete)


def build_parser(cls: type[RecipeSettings], prog: str, description: str, epilog: str | None = None) -> SettingsParser:
    """The command line of a recipe whose settings are `cls`."""
    parser = SettingsParser(prog=prog, description=description, epilog=epilog)
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        group = groups.get(meta.get("group", "run"), parser)
        help_text = argparse.SUPPRESS if meta.get("group") == HIDDEN else meta.get("help")
        if isinstance(field.default, bool) and meta.get("check") is None:
            if field.default:
                group.add_argument(flag("no_" + field.name), dest=field.name, action="store_false", help=help_text)
            else:
                group.add_argument(flag(field.name), dest=field.name, action="store_true", help=help_text)
            continue
        group.add_argument(flag(field.name), dest=field.name, type=_check_of(field), default=field.default,
                           metavar=field.name.upper(), help=help_text)
    return parser


def read_settings_file(cls: type[RecipeSettings], path: str) -> dict:
    """The values of a settings file, each passed through its option's check. Raises SettingsFileError
    naming the file and the setting."""
    if not os.path.isfile(path):
        raise SettingsFileError(f"--config {path}: no such file (give a JSON or YAML settings file, e.g. a run's settings.json)")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(content)
        else:
            values = json.loads(content)
    except Exception as error:  # (json and yaml raise their own kinds)
        raise SettingsFileError(f"--config {path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} "
                                f"({' '.join(str(error).split())[:200]})") from None
    if not isinstance(values, dict):
        raise SettingsFileError(f"--config {path}: expected a mapping of setting names to values, got {type(values).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    result = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields or name in NOT_SAVED:
            raise SettingsFileError(f"--config {path}: unknown setting {key!r} for {cls.__name__} (see --help for the options)")
        field = fields[name]
        if value is None or (value == field.default and type(value) is type(field.default)):
            result[name] = value
            continue
        try:
            result[name] = _check_of(field)(value)
        except argparse.ArgumentTypeError as error:
            raise SettingsFileError(f"--config {path}: {name}: {error}") from None
    return result


class SettingsFileError(Exception):
    """A settings file that cannot be read (missing, malformed, an unknown setting, a value refused by its check)."""


def parse_settings(cls: type[RecipeSettings], argv: list[str] | None, prog: str, description: str, epilog: str | None = None):
    """`cls` from the command line (`argv`; None: sys.argv) over the values of --config's file over the
    defaults. A bad option or setting is one line on stderr and SystemExit(2); --help exits 0."""
    parser = build_parser(cls, prog, description, epilog)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        try:
            parser.set_defaults(**read_settings_file(cls, first.config))
        except SettingsFileError as error:
            parser.error(str(error))
    return cls(**vars(parser.parse_args(argv)))


def save_settings(settings: RecipeSettings, output_dir: str) -> str:
    """Write the resolved settings to OUTPUT_DIR/settings.json (atomically); returns its path."""
    path = os.path.join(output_dir, "settings.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings.saved(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def shared_option_names() -> list[str]:
    """The options every recipe has (the fields of RecipeSettings), as flags."""
    return [flag(field.name) for field in dataclasses.fields(RecipeSettings)]


__all__ = [
    "AUTO",
    "RecipeSettings",
    "area_range",
    "dataset_option",
    "SettingsFileError",
    "SettingsParser",
    "below_one",
    "boolean",
    "build_parser",
    "checked",
    "flag",
    "fraction",
    "integer",
    "names",
    "nonnegative_float",
    "nonnegative_int",
    "one_of",
    "option",
    "or_auto",
    "pair",
    "parse_settings",
    "positive_float",
    "positive_int",
    "probability",
    "read_settings_file",
    "save_settings",
    "shared_option_names",
    "text",
    "up_to_one",
]
