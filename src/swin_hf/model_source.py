"""What a model name given on a command line refers to (a preset, a saved folder, a Hub id), checked in
seconds before anything slow starts: a mistyped preset or a missing folder is named as such instead of
becoming a Hub request, and a Hub id that cannot be fetched (offline, unreachable) fails at once instead
of after the Hub client's retries."""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from urllib.parse import urlparse

from .configuration_swin import PRESETS

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")


class ModelSourceError(ValueError):
    """A model name that refers to nothing loadable; the message says what to give instead."""


def _hub_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError as error:
        return False, f"{url.hostname}: {error.strerror or error}"
    return True, ""


def check_model_source(name: str, option: str = "--model", extra_presets=(), config_file: str = "config.json") -> str:
    """'preset', 'folder' or 'hub' for `name`; raises ModelSourceError (one line: what is wrong, what to
    give) for a path that does not exist, a file, a folder without a valid config, a near-miss of a preset
    name, or a Hub id that is neither cached nor reachable."""
    presets = [*PRESETS, *extra_presets]
    if name in presets:
        return "preset"
    if os.path.isdir(name):
        path = os.path.join(name, config_file)
        if not os.path.isfile(path):
            raise ModelSourceError(f"{option} {name!r} is a folder without {config_file}; give a folder written by save_pretrained.")
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as error:
            raise ModelSourceError(f"{option} {name!r}: {config_file} cannot be read ({error}); fix or replace it.") from error
        return "folder"
    if os.path.exists(name):
        raise ModelSourceError(f"{option} {name!r} is a file; give the folder that save_pretrained wrote (or a preset).")
    close = difflib.get_close_matches(name, presets, n=1, cutoff=0.8) if "/" not in name else []
    if close:
        raise ModelSourceError(f"{option} {name!r} is not a preset; did you mean {close[0]!r}? Presets: {', '.join(presets)}.")
    if not HUB_ID.fullmatch(name) or name.startswith((".", "~")) or name.endswith((".json", ".safetensors", ".bin", ".pth")):
        raise ModelSourceError(
            f"{option} {name!r}: no such folder. Give a folder written by save_pretrained, a preset ({', '.join(presets)}) "
            "or a Hub id (org/name)."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, config_file), str):
        return "hub"
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"{option} {name!r} is not a preset or a local folder, and as a Hub id it is not in the local cache while "
            "HF_HUB_OFFLINE is set. Give a local folder or a preset, or download it first."
        )
    reachable, reason = _hub_reachable()
    if not reachable:
        raise ModelSourceError(
            f"{option} {name!r} is not a preset or a local folder, and the Hugging Face Hub cannot be reached to fetch it "
            f"({reason}). Give a local folder or a preset ({', '.join(presets)}), or connect and retry."
        )
    return "hub"


__all__ = ["HUB_ID", "ModelSourceError", "check_model_source"]
