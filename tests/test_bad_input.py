"""Bad input gives one clear line, a non-zero exit and loses nothing (issue 8).

Every case runs ``sead train`` through ``sead.cli.main`` in-process and checks: exit status 2,
exactly one line on stderr (``sead train: error: ...``) naming the problem, no traceback, and,
where a run directory already exists, every byte of its checkpoints and metrics unchanged.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from tiny import char_tokenizer, save_tiny_pair, tiny_llama

from sead.cli import main
from sead.config import load_config
from sead.trainer import Trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("bad_input")
    paths = save_tiny_pair(root)
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(5) for b in range(4)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # A teacher whose tokenizer has one extra token, and a student whose head is smaller than its tokenizer.
    other = root / "teacher_other_tok"
    shutil.copytree(paths["teacher"], other)
    tok = char_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    small = root / "student_small_head"
    tiny_llama(len(char_tokenizer()) - 4, hidden=32, layers=1).save_pretrained(small)
    char_tokenizer().save_pretrained(small)
    not_a_model = root / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("no weights here")
    a = {
        **paths,
        "data": str(data),
        "root": root,
        "other_tok": str(other),
        "small_head": str(small),
        "not_a_model": str(not_a_model),
    }
    # A finished run with checkpoints step-1 and step-2, for the resume cases.
    good = root / "good_run"
    trainer = Trainer(load_config(None, args(a, good, **{"train.steps": 2, "train.save_every": 1}))).setup()
    trainer.train()
    a["good_run"] = good
    return a


def args(assets, out, **extra) -> list[str]:
    base = {
        "model.student": assets["student"],
        "model.teacher": assets["teacher"],
        "data.path": assets["data"],
        "data.prompt_field": "question",
        "data.template": "{problem}",
        "verifier.kind": "exact",
        "train.steps": 1,
        "train.batch_size": 2,
        "train.micro_batch_size": 2,
        "rollout.max_new_tokens": 3,
        "train.output_dir": str(out),
        "logging.progress": False,
        "logging.samples_every": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under ``run`` (checkpoints, metrics, config) by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def run_cli(capsys, argv: list[str]) -> str:
    """Run ``sead`` in-process; assert exit 2 and exactly one error line; return that line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sead {argv[0]}: error: "), lines[0]
    return lines[0]


def copy_good_run(assets, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(assets["good_run"], run)
    return run


# --------------------------------------------------------------------------- config and overrides

YAML_CASES = {
    "malformed_yaml": (b"train:\n  steps: [1, 2\n", ["line", "fix the YAML syntax"]),
    "yaml_not_a_mapping": (b"- train\n- optim\n", ["must be a mapping of sections"]),
    "config_not_utf8": (b"train:\n  steps: \xff\xfe\n", ["not UTF-8"]),
    "yaml_section_not_mapping": (b"train: 5\n", ["'train' is 5, not a section", "mapping in the config file"]),
    "yaml_unknown_key": (b"optim:\n  learning_rate: 0.1\n", ["unknown config key 'optim.learning_rate'"]),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_bad_config_file(assets, tmp_path, capsys, case):
    text, expected = YAML_CASES[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(text)
    line = run_cli(capsys, ["train", "--config", str(cfg), *args(assets, tmp_path / "out")])
    for piece in expected:
        assert piece in line, line
    assert not (tmp_path / "out").exists()  # nothing written before the config is valid


def test_missing_config_file(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", "--config", str(tmp_path / "nope.yaml"), *args(assets, tmp_path / "out")])
    assert "does not exist" in line and "--config" in line


OVERRIDE_CASES = {
    # name: (overrides, pieces the message must contain)
    "unknown_key": (["optim.lrr=1e-4"], ["optim.lrr", "did you mean optim.lr"]),
    "unknown_section": (["optimizer.lr=1e-4"], ["unknown config section 'optimizer'", "did you mean 'optim'"]),
    "no_equals_sign": (["optim.lr"], ["not key=value", "e.g. optim.lr="]),
    "empty_key": (["=3"], ["empty key", "section.key=value"]),
    "wrong_type_int": (["train.steps=many"], ["train.steps must be an integer", "'many'"]),
    "wrong_type_float_for_int": (["train.steps=1.5"], ["train.steps must be an integer"]),
    "wrong_type_bool": (["train.resume=maybe"], ["train.resume must be true or false"]),
    "wrong_type_list": (["objective.fractions=0.5"], ["objective.fractions must be a list"]),
    "fractions_do_not_sum_to_1": (
        ["objective.fractions=[0.5,0.4,0.2]"],
        ["sum to 1", "objective.fractions=[0.5,0.4,0.1]"],
    ),
    "fractions_negative": (["objective.fractions=[1.2,-0.3,0.1]"], [">= 0", "objective.fractions"]),
    "fractions_wrong_length": (["objective.fractions=[0.5,0.5]"], ["3 values"]),
    "unknown_method": (["objective.method=seed"], ["objective.method='seed' is unknown", "did you mean 'sead'"]),
    "negative_lr": (["optim.lr=-1e-5"], ["optim.lr must be > 0"]),
    "bad_dtype": (["model.dtype=float8"], ["model.dtype='float8'", "bfloat16"]),
    "zero_max_bad_steps": (["train.max_bad_steps=0"], ["train.max_bad_steps must be >= 1"]),
    "template_without_problem": (["data.template=hello"], ["data.template must contain {problem}"]),
}


@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_bad_override(assets, tmp_path, capsys, case):
    extra, expected = OVERRIDE_CASES[case]
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out"), *extra])
    for piece in expected:
        assert piece in line, line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- models


def test_missing_model_path(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.student": tmp_path / "no" / "student"})])
    assert "model.student=" in line and "does not exist" in line


def test_empty_teacher(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.teacher": ""})])
    assert "model.teacher is empty" in line


def test_folder_without_a_model(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.teacher": assets["not_a_model"]})])
    assert "cannot load the model from model.teacher=" in line and "check the path" in line


def test_teacher_student_tokenizer_mismatch(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.teacher": assets["other_tok"]})])
    assert "tokenizers differ" in line and "pick a teacher from the student's model family" in line


def test_vocabulary_size_mismatch(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.student": assets["small_head"]})])
    assert "model head has only" in line and "model.tokenizer" in line


# --------------------------------------------------------------------------- data


def _data_file(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


DATA_CASES = {
    "empty_dataset": ("empty.jsonl", b"", {}, ["has no rows"]),
    "missing_prompt_field": (
        "d.jsonl",
        b'{"q": "1+1=", "answer": "2"}\n',
        {},
        ["no field 'question'", "data.prompt_field"],
    ),
    "missing_answer_field": ("d.jsonl", b'{"question": "1+1="}\n', {}, ["no field 'answer'", "data.answer_field=null"]),
    "non_utf8_row": (
        "d.jsonl",
        b'{"question": "1+1=", "answer": "2"}\n{"question": "\xff\xfe", "answer": "1"}\n',
        {},
        ["line 2 is not UTF-8", "re-encode"],
    ),
    "invalid_json_row": ("d.jsonl", b'{"question": "1+1=", "answer": "2"}\n{oops\n', {}, ["line 2 is not valid JSON"]),
    "row_not_an_object": ("d.jsonl", b'["1+1=", "2"]\n', {}, ["not an object"]),
    "empty_prompt": ("d.jsonl", b'{"question": "  ", "answer": "2"}\n', {}, ["is empty"]),
    "unknown_file_type": ("d.txt", b"1+1=\n", {}, ["unknown file type", ".jsonl"]),
    "prompt_longer_than_context": (
        "d.jsonl",
        b'{"question": "123456789+987654321=", "answer": "x"}\n',
        {"rollout.max_prompt_tokens": 8},
        ["prompt '0'", "more than rollout.max_prompt_tokens=8"],
    ),
    "grpo_without_answers": (
        "d.jsonl",
        b'{"question": "1+1="}\n',
        {"objective.method": "grpo", "data.answer_field": "null", "objective.group_size": 2},
        ["needs a reference answer", "data.answer_field"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data(assets, tmp_path, capsys, case):
    name, content, extra, expected = DATA_CASES[case]
    data = _data_file(tmp_path, name, content)
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"data.path": data, **extra})])
    for piece in expected:
        assert piece in line, line


def test_missing_data_path(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"data.path": tmp_path / "nope.jsonl"})])
    assert "does not exist" in line


# --------------------------------------------------------------------------- curriculum


def _difficulties(tmp_path, rows) -> str:
    path = tmp_path / "difficulty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_curriculum_without_difficulty_file(assets, tmp_path, capsys):
    line = run_cli(
        capsys,
        [
            "train",
            *args(assets, tmp_path / "out", **{"objective.curriculum": "true", "curriculum.sampler": "competence"}),
        ],
    )
    assert "curriculum.difficulty_path" in line and "sead difficulty" in line


def test_missing_difficulty_file(assets, tmp_path, capsys):
    line = run_cli(
        capsys,
        [
            "train",
            *args(
                assets,
                tmp_path / "out",
                **{
                    "objective.curriculum": "true",
                    "curriculum.sampler": "competence",
                    "curriculum.difficulty_path": tmp_path / "nope.jsonl",
                    "curriculum.auto_estimate": "false",
                },
            ),
        ],
    )
    assert "difficulty file" in line and "does not exist" in line


def test_difficulty_file_for_other_prompts(assets, tmp_path, capsys):
    path = _difficulties(tmp_path, [{"id": f"other-{i}", "difficulty": 0.5} for i in range(20)])
    line = run_cli(
        capsys,
        [
            "train",
            *args(
                assets,
                tmp_path / "out",
                **{
                    "objective.curriculum": "true",
                    "curriculum.sampler": "competence",
                    "curriculum.difficulty_path": path,
                },
            ),
        ],
    )
    assert "20 of 20 prompts have no difficulty" in line and "re-run `sead difficulty`" in line


def test_difficulty_out_of_range(assets, tmp_path, capsys):
    path = _difficulties(tmp_path, [{"id": str(i), "difficulty": 1.5} for i in range(20)])
    line = run_cli(
        capsys,
        [
            "train",
            *args(
                assets,
                tmp_path / "out",
                **{
                    "objective.curriculum": "true",
                    "curriculum.sampler": "competence",
                    "curriculum.difficulty_path": path,
                },
            ),
        ],
    )
    assert "outside [0, 1]" in line


def test_curriculum_with_uniform_sampler(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"objective.curriculum": "true"})])
    assert "curriculum.sampler=competence|sorted|refreshing" in line


def test_zero_eligible_prompts_fall_back_to_the_easiest():
    """No prompt under the competence line is not an error: the batch_size easiest are used (documented)."""
    from sead.curriculum import CurriculumConfig, build_sampler

    difficulties = [1.0] * 10 + [0.9, 0.95]
    sampler = build_sampler(CurriculumConfig(sampler="competence", c0=0.01), len(difficulties), 100, difficulties)
    batch = sampler.next_batch(0, 2)
    assert sorted(batch) == [10, 11]


# --------------------------------------------------------------------------- run directory


def test_output_directory_not_writable(assets, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = run_cli(capsys, ["train", *args(assets, blocker / "run")])
    assert "train.output_dir=" in line and "not writable" in line and "choose another directory" in line


def test_existing_run_without_resume(assets, tmp_path, capsys):
    run = copy_good_run(assets, tmp_path)
    before = snapshot(run)
    line = run_cli(capsys, ["train", *args(assets, run, **{"train.steps": 2, "train.save_every": 1})])
    assert "already holds a run" in line and "train.resume=true" in line
    assert snapshot(run) == before


def test_resume_with_changed_config_is_refused(assets, tmp_path, capsys):
    run = copy_good_run(assets, tmp_path)
    before = snapshot(run)
    line = run_cli(
        capsys,
        [
            "train",
            *args(assets, run, **{"train.steps": 2, "train.save_every": 1, "train.resume": "true", "optim.lr": 5e-4}),
        ],
    )
    assert "changed config (optim.lr)" in line and "train.force_resume=true" in line
    assert snapshot(run) == before


def test_resume_with_changed_config_when_forced(assets, tmp_path, capsys):
    run = copy_good_run(assets, tmp_path)
    code = main(
        [
            "train",
            *args(
                assets,
                run,
                **{"train.steps": 3, "train.save_every": 1, "train.resume": "true", "train.force_resume": "true"},
            ),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


CORRUPTIONS = {
    "truncated_weights": ("model.safetensors", lambda b: b[: len(b) // 2]),
    "truncated_optimizer": ("optimizer.bin", lambda b: b[: len(b) // 3]),
    "garbage_trainer_state": ("trainer_state.json", lambda b: b"{not json"),
    "empty_rng_state": ("random_states_0.pkl", lambda b: b""),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint(assets, tmp_path, capsys, case):
    run = copy_good_run(assets, tmp_path)
    name, corrupt = CORRUPTIONS[case]
    target = run / "checkpoints" / "step-2" / name
    target.write_bytes(corrupt(target.read_bytes()))
    before = snapshot(run)
    line = run_cli(
        capsys, ["train", *args(assets, run, **{"train.steps": 2, "train.save_every": 1, "train.resume": "true"})]
    )
    assert "checkpoints/step-2 is corrupt or incomplete" in line and "delete it to resume from the previous one" in line
    assert snapshot(run) == before


def test_checkpoint_without_complete_marker_is_not_picked(assets, tmp_path):
    from sead.checkpoint import latest_checkpoint

    run = copy_good_run(assets, tmp_path)
    (run / "checkpoints" / "step-2" / "COMPLETE").unlink()
    shutil.copytree(run / "checkpoints" / "step-1", run / "checkpoints" / ".tmp-step-3")
    assert latest_checkpoint(run) == run / "checkpoints" / "step-1"


def _disk_full_during_save(monkeypatch, fail_dir: str, exc: Exception, seen: dict):
    """Make accelerate's save_state write half a file into ``fail_dir`` and then fail like a full disk."""
    import accelerate

    real = accelerate.Accelerator.save_state

    def save_state(self, output_dir=None, **kw):
        if Path(output_dir).name == fail_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a fi")
            run = Path(output_dir).parent.parent
            seen["before"] = snapshot(run)  # what must survive: earlier checkpoints, metrics so far
            raise exc
        return real(self, output_dir, **kw)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_state)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 41600 vs 41492"),
    ],
    ids=["oserror", "torch_save_runtimeerror"],
)  # what torch.save raises on a full disk
def test_disk_full_during_checkpoint(assets, tmp_path, capsys, monkeypatch, exc):
    seen = {}
    _disk_full_during_save(monkeypatch, ".tmp-step-2", exc, seen)
    run = tmp_path / "run"
    line = run_cli(capsys, ["train", *args(assets, run, **{"train.steps": 2, "train.save_every": 1})])
    assert "could not write checkpoint step-2" in line and "free disk space" in line and "train.resume=true" in line
    after = snapshot(run)
    assert not (run / "checkpoints" / ".tmp-step-2").exists()  # the half-written folder is removed
    assert not (run / "checkpoints" / "step-2").exists()
    assert {k: v for k, v in after.items() if "step-1" in k} == {
        k: v for k, v in seen["before"].items() if "step-1" in k
    }
    assert after["metrics.jsonl"] == seen["before"]["metrics.jsonl"]
    assert [json.loads(x)["step"] for x in after["metrics.jsonl"].decode().splitlines()] == [1, 2]
    if isinstance(exc, OSError):  # ... and the run resumes from the last good checkpoint once there is space
        monkeypatch.undo()
        code = main(["train", *args(assets, run, **{"train.steps": 2, "train.save_every": 1, "train.resume": "true"})])
        assert code == 0
        assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert "resumed from" in capsys.readouterr().out


def test_disk_full_writing_metrics(assets, tmp_path, capsys, monkeypatch):
    import sead.metrics

    run = copy_good_run(assets, tmp_path)
    before = snapshot(run)

    def full_disk_open(path, mode="r", *a, **kw):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(sead.metrics, "open", full_disk_open, raising=False)
    line = run_cli(
        capsys,
        [
            "train",
            *args(
                assets,
                run,
                **{"train.steps": 3, "train.save_every": 1, "train.resume": "true", "train.force_resume": "true"},
            ),
        ],
    )
    assert "could not append step 3" in line and "free disk space" in line
    after = snapshot(run)
    for key, value in before.items():
        if key.startswith("checkpoints/") or key == "metrics.jsonl":
            assert after[key] == value, key


def test_disk_full_writing_final_model(assets, tmp_path, capsys, monkeypatch):
    import transformers

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    run = tmp_path / "run"
    line = run_cli(capsys, ["train", *args(assets, run)])
    assert "could not write the final model" in line and "No space left on device" in line
    assert (run / "checkpoints" / "step-1" / "COMPLETE").exists()
    assert not (run / ".final-tmp").exists()


# --------------------------------------------------------------------------- issue 15: silent wrong training

RANGE_CASES = {
    # Each value used to be accepted and trained on (a negative or > 1 Zone C weight pushes the student away).
    "alpha_start_negative": (["objective.alpha_start=-0.1"], ["objective.alpha_start must be in [0, 1], got -0.1"]),
    "alpha_start_above_one": (["objective.alpha_start=1.5"], ["objective.alpha_start must be in [0, 1], got 1.5"]),
    "alpha_end_negative": (["objective.alpha_end=-1"], ["objective.alpha_end must be in [0, 1], got -1"]),
    "alpha_interpolate_negative": (
        ["objective.zone_c_mix=interpolate", "objective.alpha_start=2"],
        ["objective.alpha_start must be in [0, 1]"],
    ),
    "teacher_threshold_negative": (["objective.teacher_threshold=-1"], ["objective.teacher_threshold must be >= 0"]),
    "student_threshold_negative": (["objective.student_threshold=-0.5"], ["objective.student_threshold must be >= 0"]),
    "tau_negative": (["objective.tau=-1"], ["objective.tau must be >= 0"]),
    "min_lr_ratio_above_one": (["optim.min_lr_ratio=2"], ["optim.min_lr_ratio must be in [0, 1], got 2"]),
    "max_grad_norm_zero": (["optim.max_grad_norm=0"], ["optim.max_grad_norm must be > 0"]),
    "weight_decay_negative": (["optim.weight_decay=-0.1"], ["optim.weight_decay must be >= 0"]),
    "adam_eps_zero": (["optim.eps=0"], ["optim.eps must be in (0, 1)"]),
    "lr_infinite": (["optim.lr=.inf"], ["optim.lr must be > 0 and finite, got inf"]),
    "nan_value": (["objective.lam=.nan"], ["objective.lam must be a number"]),
    "seed_negative": (["train.seed=-1"], ["train.seed must be in [0, 2**32)"]),
    "torch_threads_zero": (["train.torch_threads=0"], ["train.torch_threads must be >= 1 or null"]),
    "samples_every_negative": (["logging.samples_every=-1"], ["logging.samples_every must be >= 0"]),
    "unknown_tracker": (
        ["logging.trackers=[tensorbord]"],
        ["logging.trackers: 'tensorbord' is not a tracker", "did you mean 'tensorboard'"],
    ),
    "unknown_long_prompts": (["data.long_prompts=cut"], ["data.long_prompts must be one of error, truncate, drop"]),
}


@pytest.mark.parametrize("case", list(RANGE_CASES))
def test_out_of_range_knob(assets, tmp_path, capsys, case):
    extra, expected = RANGE_CASES[case]
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out"), *extra])
    for piece in expected:
        assert piece in line, line
    assert not (tmp_path / "out").exists()


def test_tracker_without_its_package(assets, tmp_path, capsys, monkeypatch):
    import sead.trackers

    monkeypatch.setattr(sead.trackers, "_installed", lambda module: False)
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out"), "logging.trackers=[tensorboard]"])
    assert "'tensorboard' needs the 'tensorboard' package" in line and "pip install tensorboard" in line
    assert not (tmp_path / "out").exists()


def test_tracker_names_are_accelerates():
    from accelerate.utils import LoggerType

    from sead.trackers import TRACKER_PACKAGES

    assert set(TRACKER_PACKAGES) | {"all"} == {t.value for t in LoggerType}


# --------------------------------------------------------------------------- prompts against the model context


@pytest.fixture(scope="module")
def short_teacher(assets):
    """The teacher, saved with a 64-position context (smaller than the student's 256)."""
    from transformers import AutoModelForCausalLM

    path = assets["root"] / "teacher_ctx64"
    if not path.exists():
        model = AutoModelForCausalLM.from_pretrained(assets["teacher"])
        model.config.max_position_embeddings = 64
        model.save_pretrained(path)
        char_tokenizer().save_pretrained(path)
    return str(path)


def test_prompt_plus_response_longer_than_the_teachers_context(assets, short_teacher, tmp_path, capsys):
    line = run_cli(
        capsys,
        ["train", *args(assets, tmp_path / "out", **{"model.teacher": short_teacher, "rollout.max_new_tokens": 61})],
    )
    assert "prompt '0'" in line and "with rollout.max_new_tokens=61 that is 65 positions" in line
    assert "more than the teacher's context of 64 (max_position_embeddings)" in line
    assert "(20 of 20 prompts are too long)" in line and "data.long_prompts=truncate" in line
    assert not (tmp_path / "out").exists()


def test_opsd_teacher_prompt_longer_than_the_context(assets, tmp_path, capsys):
    template = "{prompt} " + "x" * 250 + " {answer}"  # the privileged prompt, not the student's, overflows
    line = run_cli(
        capsys,
        ["train", *args(assets, tmp_path / "out", **{"objective.method": "opsd", "objective.opsd_template": template})],
    )
    assert "the OPSD teacher prompt (objective.opsd_template) of prompt '0'" in line
    assert "more than the student's context of 256" in line


def test_max_new_tokens_fill_the_context(assets, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"rollout.max_new_tokens": 256})])
    assert "rollout.max_new_tokens=256 leaves no room for a prompt in the student's context of 256" in line


def _mixed_lengths(tmp_path) -> str:
    long_question = "1+" * 40 + "1="  # 82 tokens
    rows = [{"question": long_question, "answer": "41"}] + [
        {"question": f"{a}+1=", "answer": str(a + 1)} for a in range(5)
    ]
    return _data_file(tmp_path, "mixed.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_long_prompts_cut_or_dropped_when_asked(assets, tmp_path, capsys, mode):
    run = tmp_path / "out"
    batch = 6 if mode == "truncate" else 5  # every prompt left, once
    extra = {
        "data.path": _mixed_lengths(tmp_path),
        "data.long_prompts": mode,
        "rollout.max_prompt_tokens": 16,
        "train.batch_size": batch,
        "train.micro_batch_size": batch,
        "logging.samples_every": 1,
        "logging.num_samples": 6,
    }
    capsys.readouterr()
    assert main(["train", *args(assets, run, **extra)]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sead: warning:")]
    assert len(warnings) == 1 and f"data.long_prompts={mode}" in warnings[0] and "1 of 6 prompts" in warnings[0]
    assert [json.loads(x)["note"] for x in (run / "notes.jsonl").read_text().splitlines()] == [warnings[0][15:]]
    prompts = {json.loads(x)["prompt"] for x in (run / "samples.jsonl").read_text().splitlines()}
    if mode == "truncate":  # the last 16 tokens of the long prompt (the end of the question) are kept
        assert ("1+" * 40 + "1=")[-16:] in prompts and len(prompts) == 6
    else:
        assert len(prompts) == 5 and all(len(p) < 16 for p in prompts)


# --------------------------------------------------------------------------- curriculum sanity


def _curriculum(path) -> dict:
    return {"objective.curriculum": "true", "curriculum.sampler": "competence", "curriculum.difficulty_path": path}


def test_difficulty_file_without_spread_is_reported_and_every_prompt_is_drawn(assets, tmp_path, capsys):
    path = _difficulties(tmp_path, [{"id": str(i), "difficulty": 1.0} for i in range(20)])
    run = tmp_path / "out"
    capsys.readouterr()
    assert main(["train", *args(assets, run, **_curriculum(path), **{"train.steps": 2})]) == 0
    err = capsys.readouterr().err
    assert f"sead: warning: every difficulty in {path} is 1 (no spread)" in err
    assert "draws from all 20 prompts alike" in err
    assert "no spread" in (run / "notes.jsonl").read_text()
    assert [json.loads(x)["curriculum/eligible"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        1.0,
        1.0,
    ]


def test_sampler_with_tied_difficulties_does_not_repeat_one_batch():
    """Before: all prompts at 1.0 gave the same first 8 prompts (by position) on every step but the last."""
    from sead.curriculum import CurriculumConfig, build_sampler

    sampler = build_sampler(CurriculumConfig(sampler="competence"), 40, 100, [1.0] * 40)
    drawn = [i for step in range(5) for i in sampler.next_batch(step, 8)]
    assert len(set(drawn)) == 40  # every prompt once before any repeats


def test_eligible_pool_smaller_than_the_batch_is_reported(assets, tmp_path, capsys):
    path = _difficulties(tmp_path, [{"id": str(i), "difficulty": 0.5 + i / 40} for i in range(20)])
    capsys.readouterr()
    assert main(["train", *args(assets, tmp_path / "out", **_curriculum(path), **{"train.steps": 3})]) == 0
    err = capsys.readouterr().err
    assert "sead: warning: at step 1 only 0 of 20 prompts" in err and "fewer than train.batch_size=2" in err
    assert "through step 1 the competence sampler draws from the 2 easiest prompts instead" in err


def test_batch_larger_than_the_data_is_reported(assets, tmp_path, capsys):
    capsys.readouterr()
    assert (
        main(["train", *args(assets, tmp_path / "out", **{"train.batch_size": 24, "train.micro_batch_size": 24})]) == 0
    )
    assert (
        "sead: warning: train.batch_size=24 is larger than the 20 prompts: every batch repeats prompts"
        in capsys.readouterr().err
    )


# --------------------------------------------------------------------------- run-folder lock


def test_second_run_on_a_locked_folder_is_refused(assets, tmp_path, capsys):
    import os
    import socket

    from sead.run_lock import claim_run_dir

    run = copy_good_run(assets, tmp_path)
    with claim_run_dir(run):  # another run holds the folder (same host; the lock is per open file)
        before = snapshot(run)
        for extra in ({}, {"train.resume": "true"}):
            line = run_cli(capsys, ["train", *args(assets, run, **{"train.steps": 2, **extra})])
            assert f"is in use by another sead run (pid {os.getpid()} on host {socket.gethostname()}" in line
            assert snapshot(run) == before
    assert not (run / ".sead.lock").exists()  # released on exit


def test_stale_lock_is_taken_over_with_a_note(assets, tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "out"
    run.mkdir()
    (run / ".sead.lock").write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started": "then"}))
    capsys.readouterr()
    assert main(["train", *args(assets, run)]) == 0
    err = capsys.readouterr().err
    assert f"sead: warning: took over the stale lock {run / '.sead.lock'} of pid {dead.pid} on host elsewhere" in err
    assert (run / "final").is_dir() and not (run / ".sead.lock").exists()


# --------------------------------------------------------------------------- model and tokenizer paths


def test_mistyped_relative_model_path_is_not_tried_on_the_hub(assets, tmp_path, capsys, monkeypatch):
    import time

    (tmp_path / "models" / "student").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.student": "models/nostudent"})])
    assert time.monotonic() - t0 < 10  # no hub retries
    assert "model.student='models/nostudent' does not exist (models holds: student)" in line


def test_teacher_path_that_is_a_file(assets, tmp_path, capsys):
    config = str(Path(assets["teacher"]) / "config.json")
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.teacher": config})])
    assert f"model.teacher={config!r} is a file, not a folder" in line and "model.teacher_gguf_file" in line


@pytest.fixture(scope="module")
def no_tokenizer(assets) -> str:
    path = assets["root"] / "student_without_tokenizer"
    if not path.exists():
        path.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(Path(assets["student"]) / name, path / name)
    return str(path)


def test_student_folder_without_tokenizer_files(assets, no_tokenizer, tmp_path, capsys):
    line = run_cli(capsys, ["train", *args(assets, tmp_path / "out", **{"model.student": no_tokenizer})])
    assert "has no tokenizer files" in line and "tokenizer.json" in line and "model.tokenizer" in line


# --------------------------------------------------------------------------- sead eval


def _eval_args(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "eval.prompt_field=question",
        "eval.template={problem}",
        "eval.k=0",
        "eval.max_new_tokens=2",
        "logging.progress=false",
        *extra,
    ]


def test_eval_on_a_model_folder_without_tokenizer_files(no_tokenizer, assets, tmp_path, capsys):
    line = run_cli(capsys, _eval_args(no_tokenizer, assets["data"], tmp_path / "ev"))
    assert f"--model={no_tokenizer!r} has no tokenizer files" in line and "tokenizer.save_pretrained" in line
    assert not (tmp_path / "ev").exists()


def test_eval_warns_when_the_verifier_cannot_match_the_answers(assets, tmp_path, capsys):
    rows = [{"question": f"{i}+1=", "answer": f"{i}+1={i + 1}.A:{i + 1}"} for i in range(3)]  # solutions, not answers
    data = _data_file(tmp_path, "solutions.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    capsys.readouterr()
    assert main(_eval_args(assets["student"], data, tmp_path / "ev", "verifier.kind=sead.toy:verify")) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(warnings) == 1 and warnings[0].startswith("sead eval: warning: the verifier cannot match 3 of 3")
    result = json.loads((tmp_path / "ev" / "eval" / "student.json").read_text())
    assert result["warnings"] == [warnings[0][len("sead eval: warning: ") :]]


def test_null_answer_is_named_as_null(assets, tmp_path, capsys):
    data = _data_file(tmp_path, "d.jsonl", b'{"question": "1+1=", "answer": null}\n')
    for argv in (
        ["train", *args(assets, tmp_path / "out", **{"data.path": data})],
        _eval_args(assets["student"], data, tmp_path / "ev"),
    ):
        line = run_cli(capsys, argv)
        assert "line 1: field 'answer' is null" in line and "has no field" not in line


# --------------------------------------------------------------------------- failed starts and forced resumes


@pytest.mark.parametrize("out", ["out", "out/a/b"])
def test_failed_start_leaves_no_new_folder(assets, tmp_path, capsys, out):
    data = _data_file(tmp_path, "d.jsonl", b'{"q": "1+1=", "answer": "2"}\n')
    run_cli(capsys, ["train", *args(assets, tmp_path / out, **{"data.path": data})])
    assert not (tmp_path / "out").exists()


def test_failed_start_in_an_existing_folder_changes_nothing(assets, tmp_path, capsys):
    run = copy_good_run(assets, tmp_path)
    before = snapshot(run)
    run_cli(capsys, ["train", *args(assets, run, **{"train.resume": "true", "model.teacher": assets["not_a_model"]})])
    assert snapshot(run) == before


def test_forced_resume_records_which_steps_ran_with_which_config(assets, tmp_path, capsys):
    import yaml

    run = copy_good_run(assets, tmp_path)
    old_lr = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
    assert (
        main(
            [
                "train",
                *args(
                    assets,
                    run,
                    **{
                        "train.steps": 3,
                        "train.save_every": 1,
                        "train.resume": "true",
                        "train.force_resume": "true",
                        "optim.lr": 5e-4,
                    },
                ),
            ]
        )
        == 0
    ), capsys.readouterr().err
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    assert [h["from_step"] for h in history] == [1, 3]
    assert history[0]["config"]["optim"]["lr"] == old_lr and "changed" not in history[0]
    assert history[1]["changed"] == {"optim.lr": [old_lr, 5e-4], "train.steps": [2, 3]}
    assert history[1]["config"] == yaml.safe_load((run / "config.yaml").read_text())
