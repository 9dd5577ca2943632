"""wordlm.settings: one source of truth for settings. Every dataclass setting has its flag with the
same default, and the CLI runs the dataclass's own validator (the same message from both sides)."""

from __future__ import annotations

import dataclasses

import pytest

from wordlm import settings
from wordlm.bench.run import BenchConfig
from wordlm.cli import build_parser
from wordlm.errors import WordLMError
from wordlm.quantize.budget import BudgetConfig
from wordlm.runtime import Sampling
from wordlm.train import TrainConfig

# (command, settings, fields that are not flags, flags named otherwise than their field)
CASES = [
    ("train", TrainConfig, {"eval_batch_size"}, {}),
    ("generate", Sampling, set(), {}),
    ("bench", BenchConfig, {"rss_tokens", "all_cores", "variants", "measure_rss"}, {}),
    (
        "quantize",
        BudgetConfig,
        {"streams", "widths", "embedding_groups", "max_rounds"},
        {"recurrent_min_bits": "min_recurrent_bits"},
    ),
]


def _flags(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions}


def _default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@pytest.mark.parametrize(("command", "cls", "internal", "renamed"), CASES, ids=[c[0] for c in CASES])
def test_every_setting_is_a_flag_with_its_default(command, cls, internal, renamed):
    flags = _flags(command)
    for f in dataclasses.fields(cls):
        if f.name in internal:
            assert f.name not in flags, f"{command}: {f.name} is listed as internal but has a flag"
            continue
        action = flags.get(renamed.get(f.name, f.name))
        assert action is not None, f"wordlm {command} has no flag for {cls.__name__}.{f.name}"
        if command == "quantize" and f.name == "budget":  # in a group with --scheme: None means "not asked"
            assert action.default is None
        else:
            assert action.default == _default(f), f"--{f.name}: {action.default!r} != {_default(f)!r}"


@pytest.mark.parametrize(
    ("cls", "changes"),
    [
        (TrainConfig, dict(lr=0.0)),
        (TrainConfig, dict(seed=-1)),
        (TrainConfig, dict(precision="fp16")),
        (Sampling, dict(top_p=0.0)),
    ],
)
def test_the_api_and_the_cli_refuse_a_value_with_one_message(cls, changes):
    ((name, value),) = changes.items()
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    with pytest.raises(WordLMError) as api:
        settings.validate(dataclasses.replace(cls(), **changes))
    flag = settings.flag_of(f)
    assert str(api.value).startswith(f"{flag}: must be")
    import argparse

    with pytest.raises(argparse.ArgumentTypeError) as cli:
        settings.flag_type(cls, name)["type"](str(value))
    assert str(api.value) == f"{flag}: {cli.value}"


def test_one_thread_validator_everywhere():
    from wordlm import native
    from wordlm.runtime import check_threads

    for bad in (0, 257, True, 1.5):
        for check in (check_threads, native._threads):
            with pytest.raises(WordLMError, match="must be an integer from 1 to 256"):
                check(bad)
