"""Experiment trackers (``logging.trackers``): the names accelerate knows, and whether each is installed.

Checked when the config is loaded, so a misspelt name or a missing package is one line before
anything runs (accelerate itself raises a traceback for the first and only warns for the second,
after which the run silently loses its logs).
"""

from __future__ import annotations

import difflib
import importlib.util

from sead.errors import ConfigError

__all__ = ["TRACKER_PACKAGES", "check_trackers", "tracker_init_kwargs", "tracker_config", "start_trackers"]

# accelerate's LoggerType names -> the importable packages that provide each ("all": whatever is installed).
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "comet_ml": ("comet_ml",),
    "aim": ("aim",),
    "mlflow": ("mlflow",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
    "trackio": ("trackio",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_trackers(names: list[str]) -> None:
    """Raise ``ConfigError`` for an unknown tracker name or a tracker whose package is not installed."""
    for name in names:
        if name == "all":
            continue
        if name not in TRACKER_PACKAGES:
            hint = difflib.get_close_matches(str(name), list(TRACKER_PACKAGES), n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"use one of {', '.join(TRACKER_PACKAGES)} or all"
            raise ConfigError(f"logging.trackers: {name!r} is not a tracker; {fix}")
        packages = TRACKER_PACKAGES[name]
        if not any(_installed(p) for p in packages):
            raise ConfigError(
                f"logging.trackers: {name!r} needs the {packages[0]!r} package, which is not installed; "
                f"pip install {packages[0]}, or remove it from logging.trackers"
            )


def tracker_init_kwargs(names: list[str], run_name: str, run_dir) -> dict[str, dict]:
    """accelerate's ``init_trackers(init_kwargs=...)``: the run's name for the trackers that take one
    (W&B and trackio; TensorBoard writes under ``RUN/<project>/``), W&B's files inside the run folder."""
    every = "all" in names
    kwargs: dict[str, dict] = {}
    if every or "wandb" in names:
        kwargs["wandb"] = {"name": run_name, "dir": str(run_dir)}
    if every or "trackio" in names:
        kwargs["trackio"] = {"name": run_name}
    return kwargs


def tracker_config(config: dict) -> dict[str, int | float | str | bool]:
    """The run config as ``{"section.key": scalar}``: TensorBoard's hparams refuse nested values, lists and
    None (accelerate passes the config to every tracker alike), so lists and None become their text."""
    flat: dict[str, int | float | str | bool] = {}
    for name, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": v for key, v in tracker_config(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def start_trackers(accelerator, logging_cfg, config: dict, name: str, run_dir) -> None:
    """``accelerator.init_trackers`` for ``logging.trackers``: the project, the flat config, the run's name."""
    run_name = logging_cfg.run_name or name
    accelerator.init_trackers(
        logging_cfg.project,
        config=tracker_config(config),
        init_kwargs=tracker_init_kwargs(logging_cfg.trackers, run_name, run_dir),
    )
