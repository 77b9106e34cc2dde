"""Prompt samplers: which prompts each optimiser step trains on (uniform or a difficulty curriculum).

The trainer builds one sampler with `build_sampler`, then at each 0-based optimiser step calls
``indices = sampler.next_batch(step, batch_size)``, rolls out ``prompts[i] for i in indices``,
calls ``sampler.update(indices, pass_fractions)`` with the verifier pass fraction of each prompt's
rollouts (skip it when there is no verifier), and logs ``sampler.metrics()``. ``state_dict()`` is
JSON-serialisable; restoring it makes a resumed run draw the same batches.

Samplers (``CurriculumConfig.sampler``):
- ``uniform``: seeded shuffle per epoch, without replacement within an epoch.
- ``competence``: prompts with difficulty d_i <= c(step + 1) (`sead.schedule.competence` at the
  1-based step number, so c = 1 and every prompt is eligible on the last step) are eligible;
  batches are drawn at random from the eligible prompts not yet drawn this epoch (an epoch restarts
  once every eligible prompt was drawn). **[choice]** When fewer than ``batch_size`` prompts are
  eligible (none, early on a hard data set), the ``batch_size`` easiest prompts are eligible instead,
  with every prompt tied with the last of them (so a file with no spread makes all prompts eligible,
  not the first ``batch_size`` by position). `sampler_notes` says so at the start of a run.
- ``sorted`` (the paper's experiments): one pass easy to hard ordered by d_i + N(0, noise_sigma^2);
  if the run has more steps than one pass, a new pass with fresh noise follows.
- ``refreshing``: ``competence`` whose difficulties follow the training verdicts:
  d_i <- m d_i + (1 - m)(1 - pass_i) with m = ``refresh_momentum`` for every prompt in a batch, and
  a fraction ``explore_frac`` of each batch is taken from the easiest not-yet-eligible prompts, so
  the difficulties just above the competence line are re-measured for free.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from sead.errors import CheckpointError, ConfigError, DataError
from sead.schedule import competence
from sead.settings import setting

__all__ = [
    "CurriculumConfig",
    "PromptSampler",
    "UniformSampler",
    "CompetenceSampler",
    "SortedSampler",
    "RefreshingSampler",
    "build_sampler",
    "sampler_notes",
]

SAMPLERS = ("uniform", "competence", "sorted", "refreshing")


@dataclass
class CurriculumConfig:
    """Prompt order: uniform, or a curriculum over per-prompt difficulties (see module doc)."""

    sampler: str = setting("uniform", "prompt order: uniform | competence | sorted | refreshing")
    difficulty_path: str | None = setting(
        None, "per-prompt difficulty JSONL (sead difficulty); {output_dir}/difficulty.jsonl: inside the run folder"
    )
    c0: float = setting(0.25, "competence at the start: the largest difficulty admitted at step 0")
    p: float = setting(2.0, "competence growth power: c = min(1, c0 (1 + step / steps)^p)")
    noise_sigma: float = setting(0.02, "sorted sampler: std of the noise on difficulties, fresh each pass")
    refresh_momentum: float = setting(0.5, "refreshing sampler: weight of the old difficulty in each update")
    explore_frac: float = setting(0.125, "refreshing sampler: batch share from the easiest not-yet-eligible prompts")
    seed: int = setting(0, "seed of the sampler's draws")
    auto_estimate: bool = setting(True, "with no file at difficulty_path, sead train estimates it first")
    estimate_k: int = setting(8, "student rollouts per prompt for that estimate")

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"curriculum.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not 0 < self.c0 <= 1:
            raise ConfigError(f"curriculum.c0 must be in (0, 1], got {self.c0!r}; the default is 0.25")
        if not self.p > 0:
            raise ConfigError(f"curriculum.p must be > 0, got {self.p!r}; the default is 2.0")
        if not self.noise_sigma >= 0:
            raise ConfigError(f"curriculum.noise_sigma must be >= 0, got {self.noise_sigma!r}; the default is 0.02")
        if not 0 <= self.refresh_momentum < 1:
            raise ConfigError(f"curriculum.refresh_momentum must be in [0, 1), got {self.refresh_momentum!r}")
        if not 0 <= self.explore_frac < 1:
            raise ConfigError(f"curriculum.explore_frac must be in [0, 1), got {self.explore_frac!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"curriculum.seed must be an integer, got {self.seed!r}")
        if self.estimate_k < 1:
            raise ConfigError(f"curriculum.estimate_k must be >= 1, got {self.estimate_k!r}; the default is 8")


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class PromptSampler:
    """Base class: draws prompt indices per step; subclasses implement `_draw`."""

    kind = "base"

    def __init__(self, num_prompts: int, total_steps: int, difficulties: list[float] | None, seed: int = 0):
        if num_prompts <= 0:
            raise DataError("the prompt set is empty; point data.path at a data set with prompts")
        if total_steps <= 0:
            raise ConfigError(f"the sampler needs total_steps > 0, got {total_steps}; set train.steps")
        if difficulties is not None and len(difficulties) != num_prompts:
            raise DataError(
                f"{len(difficulties)} difficulties for {num_prompts} prompts; re-run `sead difficulty` on this data"
            )
        self.num_prompts = num_prompts
        self.total_steps = total_steps
        self.difficulties = None if difficulties is None else [float(d) for d in difficulties]
        self.rng = random.Random(seed)
        self._last: dict[str, float] = {}

    def next_batch(self, step: int, batch_size: int) -> list[int]:
        """Indices into the prompt list for 0-based optimiser step ``step``."""
        if batch_size <= 0:
            raise ConfigError(f"batch size must be > 0, got {batch_size}")
        indices = self._draw(step, batch_size)
        if self.difficulties is not None:
            self._last["curriculum/batch_difficulty"] = sum(self.difficulties[i] for i in indices) / len(indices)
        return indices

    def _draw(self, step: int, batch_size: int) -> list[int]:
        raise NotImplementedError

    def update(self, indices: list[int], passed: list[float]) -> None:
        """Record the verifier pass fraction of each drawn prompt's rollouts (free training signal)."""
        if len(indices) != len(passed):
            raise ValueError(f"update got {len(indices)} indices but {len(passed)} pass fractions")
        if passed:
            self._last["curriculum/batch_pass_rate"] = sum(map(float, passed)) / len(passed)

    def metrics(self) -> dict[str, float]:
        """Curriculum metrics of the last batch (keys per docs/FORMATS.md)."""
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "num_prompts": self.num_prompts, "rng": _rng_state(self.rng), "last": self._last}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind or state.get("num_prompts") != self.num_prompts:
            raise CheckpointError(
                f"sampler state is for {state.get('kind')} over {state.get('num_prompts')} prompts, this run uses "
                f"{self.kind} over {self.num_prompts}; resume with the same data and curriculum config"
            )
        _set_rng_state(self.rng, state["rng"])
        self._last = dict(state.get("last", {}))


class UniformSampler(PromptSampler):
    """Seeded shuffle per epoch; without replacement within an epoch."""

    kind = "uniform"

    def __init__(self, num_prompts, total_steps, difficulties=None, seed=0):
        super().__init__(num_prompts, total_steps, difficulties, seed)
        self.order: list[int] = []
        self.pos = 0
        self.epoch = -1

    def _draw(self, step, batch_size):
        out = []
        while len(out) < batch_size:
            if self.pos >= len(self.order):
                self.order = list(range(self.num_prompts))
                self.rng.shuffle(self.order)
                self.pos, self.epoch = 0, self.epoch + 1
            take = self.order[self.pos : self.pos + batch_size - len(out)]
            out += take
            self.pos += len(take)
        self._last["curriculum/epoch"] = float(self.epoch)
        return out

    def state_dict(self):
        return {**super().state_dict(), "order": self.order, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.order, self.pos, self.epoch = list(state["order"]), state["pos"], state["epoch"]


class SortedSampler(UniformSampler):
    """Easy to hard by d_i + N(0, sigma^2), one pass without replacement; then a fresh pass."""

    kind = "sorted"

    def __init__(self, num_prompts, total_steps, difficulties, seed=0, noise_sigma=0.02):
        super().__init__(num_prompts, total_steps, difficulties, seed)
        self.noise_sigma = noise_sigma

    def _draw(self, step, batch_size):
        if self.pos >= len(self.order):  # new pass: fresh noise (the base loop then never reshuffles)
            keys = [d + self.rng.gauss(0.0, self.noise_sigma) for d in self.difficulties]
            self.order = sorted(range(self.num_prompts), key=lambda i: (keys[i], i))
            self.pos, self.epoch = 0, self.epoch + 1
        out = []
        while len(out) < batch_size:
            if self.pos >= len(self.order):
                out += self._draw(step, batch_size - len(out))
                break
            take = self.order[self.pos : self.pos + batch_size - len(out)]
            out += take
            self.pos += len(take)
        self._last["curriculum/epoch"] = float(self.epoch)
        return out


class CompetenceSampler(PromptSampler):
    """Draw at random from prompts with d_i <= c(step), each once per epoch over the eligible set."""

    kind = "competence"

    def __init__(self, num_prompts, total_steps, difficulties, seed=0, c0=0.25, p=2.0):
        super().__init__(num_prompts, total_steps, difficulties, seed)
        self.c0, self.p = c0, p
        self.drawn: set[int] = set()  # drawn in the current epoch

    def competence(self, step: int) -> float:
        """c at 0-based ``step``, evaluated at the 1-based step number so the last step admits all."""
        return competence(step + 1, self.total_steps, self.c0, self.p)

    def eligible(self, step: int, batch_size: int) -> list[int]:
        """Prompts with d_i <= c(step); at least the ``batch_size`` easiest ones (module doc)."""
        c = self.competence(step)
        d = self.difficulties
        chosen = [i for i in range(self.num_prompts) if d[i] <= c + 1e-12]
        if len(chosen) < min(batch_size, self.num_prompts):
            cutoff = sorted(d)[min(batch_size, self.num_prompts) - 1]  # ties at the cut-off are as easy: keep them all
            chosen = [i for i in range(self.num_prompts) if d[i] <= cutoff]
        return chosen

    def _sample(self, pool: list[int], n: int) -> list[int]:
        """``n`` prompts of ``pool`` not drawn this epoch; starts a new epoch when they run out."""
        out: list[int] = []
        while len(out) < n:
            taken = set(out)
            fresh = [i for i in pool if i not in self.drawn and i not in taken]
            if not fresh:
                if taken.issuperset(pool):  # the pool is smaller than the batch: repeats are unavoidable
                    fresh = list(pool)
                else:  # every eligible prompt was drawn this epoch: start a new epoch over the pool
                    self.drawn = (self.drawn - set(pool)) | taken
                    continue
            take = self.rng.sample(fresh, min(n - len(out), len(fresh)))
            out += take
            self.drawn.update(take)
        return out

    def _draw(self, step, batch_size):
        pool = self.eligible(step, batch_size)
        self._last["curriculum/competence"] = self.competence(step)
        self._last["curriculum/eligible"] = len(pool) / self.num_prompts
        return self._sample(pool, batch_size)

    def state_dict(self):
        return {**super().state_dict(), "drawn": sorted(self.drawn)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.drawn = set(state["drawn"])


class RefreshingSampler(CompetenceSampler):
    """`CompetenceSampler` whose difficulties follow training verdicts, plus exploration (module doc)."""

    kind = "refreshing"

    def __init__(
        self, num_prompts, total_steps, difficulties, seed=0, c0=0.25, p=2.0, momentum=0.5, explore_frac=0.125
    ):
        super().__init__(num_prompts, total_steps, difficulties, seed, c0, p)
        self.momentum, self.explore_frac = momentum, explore_frac
        self.updates = 0

    def _draw(self, step, batch_size):
        pool = self.eligible(step, batch_size)
        in_pool = set(pool)
        upcoming = sorted(
            (i for i in range(self.num_prompts) if i not in in_pool), key=lambda i: (self.difficulties[i], i)
        )
        n_explore = min(math.floor(self.explore_frac * batch_size), len(upcoming))
        self._last["curriculum/competence"] = self.competence(step)
        self._last["curriculum/eligible"] = len(pool) / self.num_prompts
        if n_explore:  # the easiest not-yet-eligible prompts, one batch's worth to choose from
            explore = self.rng.sample(upcoming[: max(batch_size, n_explore)], n_explore)
            return self._sample(pool, batch_size - n_explore) + explore
        return self._sample(pool, batch_size)

    def update(self, indices, passed):
        super().update(indices, passed)
        m = self.momentum
        for i, ok in zip(indices, passed):
            self.difficulties[i] = m * self.difficulties[i] + (1.0 - m) * (1.0 - float(ok))
        self.updates += len(indices)
        self._last["curriculum/mean_difficulty"] = sum(self.difficulties) / self.num_prompts

    def state_dict(self):
        return {**super().state_dict(), "difficulties": self.difficulties, "updates": self.updates}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.difficulties, self.updates = [float(d) for d in state["difficulties"]], state["updates"]


def build_sampler(
    cfg: CurriculumConfig, num_prompts: int, total_steps: int, difficulties: list[float] | None = None
) -> PromptSampler:
    """The sampler ``cfg.sampler`` over ``num_prompts`` prompts for a run of ``total_steps`` steps."""
    if cfg.sampler == "uniform":
        return UniformSampler(num_prompts, total_steps, difficulties, cfg.seed)
    if difficulties is None:
        raise ConfigError(
            f"curriculum.sampler={cfg.sampler} needs prompt difficulties; run `sead difficulty` and set "
            "curriculum.difficulty_path to its output"
        )
    if cfg.sampler == "sorted":
        return SortedSampler(num_prompts, total_steps, difficulties, cfg.seed, cfg.noise_sigma)
    if cfg.sampler == "competence":
        return CompetenceSampler(num_prompts, total_steps, difficulties, cfg.seed, cfg.c0, cfg.p)
    return RefreshingSampler(
        num_prompts, total_steps, difficulties, cfg.seed, cfg.c0, cfg.p, cfg.refresh_momentum, cfg.explore_frac
    )


def sampler_notes(sampler: PromptSampler, batch_size: int, source: str | None) -> list[str]:
    """One line per way the prompts drawn will differ from what the config suggests (shown at start)."""
    n, d, notes = sampler.num_prompts, sampler.difficulties, []
    if batch_size > n:
        notes.append(f"train.batch_size={batch_size} is larger than the {n} prompts: every batch repeats prompts")
    if d is None or sampler.kind == "uniform":
        return notes
    if max(d) - min(d) < 1e-9:
        does = (
            "orders them by its noise alone, at random"
            if sampler.kind == "sorted"
            else f"draws from all {n} prompts alike, as curriculum.sampler=uniform would"
        )
        notes.append(
            f"every difficulty in {source} is {d[0]:g} (no spread): the curriculum cannot order the prompts; "
            f"the {sampler.kind} sampler {does}"
        )
    elif isinstance(sampler, CompetenceSampler):
        ordered, want = sorted(d), min(batch_size, n)
        short = 0  # competence only grows, so the steps with too few eligible prompts come first
        while short < sampler.total_steps and bisect.bisect_right(ordered, sampler.competence(short) + 1e-12) < want:
            short += 1
        if short:
            c = sampler.competence(0)
            eligible = bisect.bisect_right(ordered, c + 1e-12)
            pool = len(sampler.eligible(0, batch_size))
            notes.append(
                f"at step 1 only {eligible} of {n} prompts in {source} have difficulty <= the competence "
                f"{c:.3g}, fewer than train.batch_size={batch_size}: through step {short} the "
                f"{sampler.kind} sampler draws from the {pool} easiest prompts instead"
            )
    return notes
