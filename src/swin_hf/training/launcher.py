"""The `lightning` command that swin_hf installs: `lightning run SCRIPT [SCRIPT ARGS]` launches a recipe
through Lightning Fabric's own launcher (`lightning.fabric.cli`, the code behind `fabric run`).

    lightning run recipes/finetune.py --dataset beans
    lightning run --accelerator cpu --devices 2 --strategy ddp recipes/segment.py --max-steps 100
    lightning run model recipes/finetune.py            # Lightning 2.0-2.2's spelling, the same thing
    lightning run --num-nodes 2 --node-rank 0 --main-address 10.0.0.1 --main-port 29400 recipes/finetune.py

Lightning 2.5 removed its own `lightning` command and ships only `fabric`. What this one adds to
`fabric run`: a launch on one machine without `--main-port` gets a free port (Fabric's default, 29400,
makes a second run started at the same time fail with "The server socket has failed to listen"; several
machines must agree on the port, so a multi-node launch keeps the default unless `--main-port` is given),
and the OMP_NUM_THREADS that Fabric's launcher sets when the user has not does not override a recipe's own
thread count (`--cpu-threads`).

Everything else (`lightning consolidate`, or the commands of Lightning AI's cloud CLI when the
`lightning-sdk` package is installed, such as `lightning login` or `lightning run job`) goes to the
program that owns it unchanged. `python -m swin_hf.training.launcher ...` is the same command.
"""

from __future__ import annotations

import os
import socket
import sys

# set to "1" for the launched processes when OMP_NUM_THREADS is Fabric's default, not the user's: the recipes'
# own thread count (--cpu-threads) then applies
LAUNCHER_SET_THREADS = "SWIN_HF_OMP_NUM_THREADS_FROM_LAUNCHER"

# Fabric's launcher options (`fabric run --help`); each takes a value
FABRIC_OPTIONS = (
    "--accelerator", "--strategy", "--devices", "--num-nodes", "--num_nodes", "--node-rank", "--node_rank",
    "--main-address", "--main_address", "--main-port", "--main_port", "--precision",
)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `address` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:  # an address of this machine that cannot be bound by name: any interface
            probe.bind(("", 0))
        return probe.getsockname()[1]


def split_launch_arguments(args: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """`run`'s arguments -> (Fabric's options before the script as {"--num-nodes": "2", ...} with
    underscores spelled as dashes, those options as given, the script and its own arguments)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, _, inline = args[i].partition("=")
        if name not in FABRIC_OPTIONS:
            break
        if inline or "=" in args[i]:
            value, step = inline, 1
        else:
            value, step = (args[i + 1] if i + 1 < len(args) else ""), 2
        options[name.replace("_", "-")] = value
        i += step
    return options, args[:i], args[i:]


def fabric_run_arguments(args: list[str], port=free_port) -> list[str]:
    """The arguments of `lightning run ...` as Fabric's CLI takes them: `run model` becomes `run`, and a
    single-machine launch without --main-port gets `--main-port <free port>`."""
    if args[:2] == ["run", "model"]:
        args = ["run", *args[2:]]
    options, given, rest = split_launch_arguments(args[1:])
    if "--main-port" not in options and options.get("--num-nodes", "1") == "1" and rest and rest[0] not in ("-h", "--help"):
        given = [*given, "--main-port", str(port(options.get("--main-address", "127.0.0.1")))]
    return ["run", *given, *rest]


def _launches_a_script(args: list[str]) -> bool:
    """`run model ...`, or `run [fabric options] SCRIPT ...` with SCRIPT a file: Fabric's launch. (Lightning
    AI's cloud CLI has `run job` and `run mmt`, which are not files.)"""
    if args[:1] != ["run"]:
        return False
    if args[1:2] == ["model"]:
        return True
    _, _, rest = split_launch_arguments(args[1:])
    return not rest or rest[0] in ("-h", "--help") or os.path.isfile(rest[0])


def _cloud_cli():
    """Lightning AI's cloud CLI (the `lightning-sdk` package's `lightning` command), or None."""
    try:
        from lightning_sdk.cli.entrypoint import main_cli
    except Exception:  # noqa: BLE001 - not installed, or not importable: Fabric's CLI answers
        return None
    return main_cli


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _launches_a_script(args):
        from lightning.fabric.cli import _main as fabric_cli

        if "OMP_NUM_THREADS" not in os.environ:  # Fabric's launcher sets it to CPUs / processes
            os.environ[LAUNCHER_SET_THREADS] = "1"

        return _click(fabric_cli, fabric_run_arguments(args))
    cloud = _cloud_cli()
    if cloud is not None:
        return _click(cloud, args)
    from lightning.fabric.cli import _main as fabric_cli

    return _click(fabric_cli, args)


def _click(command, args: list[str]) -> int:
    try:
        command.main(args=args, prog_name="lightning", standalone_mode=True)
    except SystemExit as exit:  # click ends with sys.exit; torchrun's exit status passes through
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LAUNCHER_SET_THREADS", "fabric_run_arguments", "free_port", "main", "split_launch_arguments"]
