"""From a command's parsed arguments to its experiment config: the config file, the
``--set`` overrides and the shortcut options (``--clients``, ``--rounds``, ...), shared by
``fedal run``/``partition``/``resume`` (:mod:`fedal.cli`) and ``fedal bench federation``."""

from __future__ import annotations

import argparse
import json

from fedal.config import ConfigError, ExperimentConfig, load_config, parse_override


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config a command's arguments name, with its overrides and shortcuts."""
    return load_config(args.config, overrides(args), strategy=getattr(args, "strategy", None))


SHORTCUTS = {
    "clients": "data.num_clients",
    "rounds": "federation.rounds",
    "seed": "experiment.seed",
    "client_cpus": "federation.client_cpus",
    "client_gpus": "federation.client_gpus",
    "data_dir": "data.data_dir",
    "strategy": "query.strategy",
}


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus the shortcut options this command has, as overrides.

    A shortcut is an override like any other (``--rounds 0`` is validated, not ignored);
    giving a field both as a shortcut and with ``--set`` is refused.
    """
    given = list(args.set or [])
    named = {parse_override(text)[0] for text in given}
    for option, key in SHORTCUTS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        flag = "--" + option.replace("_", "-")
        if key in named:
            raise ConfigError(f"{flag} and --set {key}=... both set {key}; give one of them")
        if option != "strategy":  # load_config takes the strategy (and drops its options)
            given.append(f"{key}={json.dumps(value)}")
    return given
