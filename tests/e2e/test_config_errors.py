"""Bad EARS settings stop `vllm serve` before any model loads, with one line naming the key, value and allowed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import TARGET, engine_env, free_port, requires_models, serve_command

pytestmark = [pytest.mark.vllm, requires_models]

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}

CASES = {
    "alpha_above_1": ({**NGRAM, "rejection_sampler": "ears", "alpha": 1.5},
                      "speculative_config['alpha']=1.5 is not allowed: it must be a number in [0, 1]"),
    "unknown_sampler": ({**NGRAM, "rejection_sampler": "lenient"},
                        "speculative_config['rejection_sampler']='lenient' is not allowed: "
                        "use one of 'standard', 'ears', 'fly', 'typical' "
                        "('fly' and 'typical': experimental, V1 runner)"),
    "no_method": ({"rejection_sampler": "ears", "alpha": 0.3},
                  "speculative_config['rejection_sampler']='ears' is not allowed without a speculative method"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_vllm_serve_exits_fast_with_one_line(case):
    config, message = CASES[case]
    start = time.monotonic()
    proc = subprocess.run(serve_command(free_port(), config), capture_output=True, text=True, env=engine_env(),
                          timeout=90)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output[-2000:]
    assert "Traceback" not in output
    assert "Loading weights" not in output and "Starting to load model" not in output


# The rest of the rules, checked in-process on the same code path (EngineArgs -> VllmConfig), no engine started.
BAD = [
    ({**NGRAM, "rejection_sampler": "ears", "alpha": -0.1}, "speculative_config['alpha']=-0.1"),
    ({**NGRAM, "rejection_sampler": "ears", "alpha": float("nan")}, "speculative_config['alpha']=nan"),
    ({**NGRAM, "rejection_sampler": "ears", "alpha": "0.3"}, "speculative_config['alpha']='0.3'"),
    ({**NGRAM, "rejection_sampler": "ears", "alpha": True}, "speculative_config['alpha']=True"),
    ({**NGRAM, "rejection_sampler": "ears", "alpha": None}, "speculative_config['alpha']=None"),
    ({**NGRAM, "rejection_sampler": 1}, "speculative_config['rejection_sampler']=1"),
    ({**NGRAM, "alpha": 0.3}, "speculative_config['alpha']=0.3 is not allowed with rejection_sampler='standard'"),
    ({"alpha": 0.3}, "speculative_config['alpha']=0.3 is not allowed with rejection_sampler='standard'"),
    ({**NGRAM, "rejection_sampler": "ears", "rejection_sample_method": "synthetic"},
     "speculative_config['rejection_sample_method']='synthetic' is not allowed with rejection_sampler='ears'"),
    ({**NGRAM, "rejection_sampler": "ears", "tv_budget": -1}, "speculative_config['tv_budget']=-1 is not allowed"),
    ({**NGRAM, "rejection_sampler": "ears", "tv_budget": float("nan")},
     "speculative_config['tv_budget']=nan is not allowed"),
    ({**NGRAM, "rejection_sampler": "ears", "tv_budget": True}, "speculative_config['tv_budget']=True"),
    ({**NGRAM, "tv_budget": 1.0},
     "speculative_config['tv_budget']=1.0 is not allowed with rejection_sampler='standard'"),
    # The experimental rules' knobs: with their own rule only, and checked.
    ({**NGRAM, "rejection_sampler": "ears", "posterior_alpha": 1},
     "speculative_config['posterior_alpha']=1 is not allowed with rejection_sampler='ears'"),
    ({**NGRAM, "rejection_sampler": "fly", "posterior_alpha": 1},
     "speculative_config['posterior_alpha']=1 is not allowed with rejection_sampler='fly'"),
    ({**NGRAM, "rejection_sampler": "fly", "fly_window_size": 0}, "speculative_config['fly_window_size']=0"),
    ({**NGRAM, "rejection_sampler": "typical", "posterior_threshold": 1.5},
     "speculative_config['posterior_threshold']=1.5"),
    ({**NGRAM, "rejection_sampler": "typical", "alpha": 0.3},
     "speculative_config['alpha']=0.3 is not allowed with rejection_sampler='typical'"),
    # Block verification and FLy (0.33) change the acceptance rule themselves: EARS cannot combine with them.
    ({**NGRAM, "rejection_sampler": "ears", "rejection_sample_method": "block"},
     "speculative_config['rejection_sample_method']='block' is not allowed with rejection_sampler='ears'"),
    ({**NGRAM, "rejection_sampler": "ears", "rejection_sample_method": "fly", "fly_window_size": 2},
     "speculative_config['rejection_sample_method']='fly' is not allowed with rejection_sampler='ears'"),
]


@pytest.fixture(scope="module")
def engine_args_cls():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs


@pytest.mark.parametrize("config,message", BAD, ids=[m.split(" is")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_config_in_process(engine_args_cls, config, message):
    from ears_vllm.vllm_plugin import EarsConfigError

    args = engine_args_cls(model=TARGET, speculative_config=json.loads(json.dumps(config)), enforce_eager=True,
                           max_model_len=256)
    with pytest.raises(EarsConfigError) as e:
        args.create_engine_config()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_good_config_reaches_additional_config(engine_args_cls):
    args = engine_args_cls(model=TARGET, speculative_config={**NGRAM, "rejection_sampler": "ears"},
                           enforce_eager=True, max_model_len=256)
    config = args.create_engine_config()
    assert config.additional_config["ears"] == {"rejection_sampler": "ears", "alpha": 0.3}  # the default alpha
    assert config.speculative_config.method == "ngram"
    # EARS runs in both runners: it does not make vLLM leave Model Runner V2 (this CPU uses V1 for lack of Triton).
    assert config._get_v2_model_runner_unsupported_features() == []


def test_tv_budget_reaches_every_process(engine_args_cls):
    args = engine_args_cls(model=TARGET, speculative_config={**NGRAM, "rejection_sampler": "ears", "tv_budget": 2},
                           enforce_eager=True, max_model_len=256)
    config = args.create_engine_config()
    assert config.additional_config["ears"] == {"rejection_sampler": "ears", "alpha": 0.3, "tv_budget": 2.0}
    from ears_vllm.vllm_plugin.config import EarsSettings

    assert EarsSettings.of(config).tv_budget == 2.0


@pytest.mark.parametrize("rule,knobs", [("fly", {"fly_window_size": 2, "fly_entropy_threshold": 0.5}),
                                        ("typical", {"posterior_alpha": 1.0})])
def test_experimental_rule_reaches_every_process(engine_args_cls, rule, knobs):
    args = engine_args_cls(model=TARGET, speculative_config={**NGRAM, "rejection_sampler": rule, **knobs},
                           enforce_eager=True, max_model_len=256)
    config = args.create_engine_config()
    from ears_vllm.vllm_plugin.config import EarsSettings

    settings = EarsSettings.of(config)
    assert settings.rule == rule and settings.tolerance_alpha == 0.0
    assert {k: v for k, v in settings.knobs if k in knobs} == knobs


def test_adaptive_verification_combines_with_ears(engine_args_cls):
    """EARS lets adaptive verification (MRV2's per-request draft budget) through; on this CPU vLLM's V1 runner then
    refuses it itself, after the EARS keys were taken."""
    from ears_vllm.vllm_plugin.config import EarsSettings

    spec = {**NGRAM, "rejection_sampler": "ears", "enable_adaptive_verification": True}
    assert EarsSettings.pop_from(spec, has_method=True).enabled and spec["enable_adaptive_verification"]
    args = engine_args_cls(model=TARGET, speculative_config={**NGRAM, "rejection_sampler": "ears",
                                                             "enable_adaptive_verification": True},
                           enforce_eager=True, max_model_len=256)
    with pytest.raises(Exception, match="Model Runner V1 does not support: adaptive draft verification"):
        args.create_engine_config()


def test_watermarking_is_refused_with_ears(engine_args_cls):
    from ears_vllm.vllm_plugin import EarsConfigError

    args = engine_args_cls(model=TARGET, speculative_config={**NGRAM, "rejection_sampler": "ears"},
                           watermark_config={"type": "gumbel"}, enforce_eager=True, max_model_len=256)
    with pytest.raises(EarsConfigError) as e:
        args.create_engine_config()
    assert "watermark_config=" in str(e.value) and "not allowed with rejection_sampler='ears'" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json")),
                         ids=lambda p: p.name)
def test_config_files_are_valid_ears_configs(path):
    from ears_vllm.vllm_plugin.config import EarsSettings

    config = json.loads(path.read_text())
    settings = EarsSettings.pop_from(config, has_method=bool(config.get("method")))
    assert settings is not None and settings.enabled and 0 <= settings.alpha <= 1


@pytest.mark.parametrize("ears,message", [
    ({"rejection_sampler": "ears", "alpha": 2}, "speculative_config['alpha']=2 is not allowed"),
    ({"rejection_sampler": "ears", "beta": 1}, "additional_config['ears'] has keys ['beta']"),
])
def test_hand_written_additional_config_is_checked_in_the_front_end(engine_args_cls, ears, message):
    """``--additional-config '{"ears": {...}}'`` goes through the same one validator, before any model loads."""
    from ears_vllm.vllm_plugin import EarsConfigError

    args = engine_args_cls(model=TARGET, speculative_config=dict(NGRAM), additional_config={"ears": ears},
                           enforce_eager=True, max_model_len=256)
    with pytest.raises(EarsConfigError) as e:
        args.create_engine_config()
    assert message in str(e.value) and "\n" not in str(e.value)
