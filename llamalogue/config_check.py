"""Checks of a config that apply to every mode (each mode checks its own fields too)."""

import pathlib

from llamalogue.errors import ConfigError


def validate(config) -> None:
  """Raises ConfigError naming the key when a common field is wrong."""
  if "mode" not in config:
    raise ConfigError("config.mode: missing; the config file must set it")
  init_from = config.get("init_from", "")
  if init_from and not init_from.startswith("hf:") and not pathlib.Path(init_from).expanduser().exists():
    raise ConfigError(f"config.init_from: path does not exist: {init_from}")
  for key in ("seed",):
    if key in config and not isinstance(config[key], int):
      raise ConfigError(f"config.{key}: expected an integer, got {config[key]!r}")
