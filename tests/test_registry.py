"""The registry: lazy listing, loading once, and one clear error for each way a plugin can go wrong.

Every test but the ones about chargen's own metadata runs inside `registered(...)`, which hides
whatever happens to be installed, so the results do not depend on the machine.
"""

import contextlib
import importlib.metadata
import sys

import numpy as np
import pytest
from test_sampling import context, run_python

from chargen.errors import ChargenError
from chargen.sampling import StrategyError, TokenSampler, available, builtin, describe_all, load
from chargen.sampling.registry import registered

BUILTINS = {  # what chargen's own pyproject registers
    cls.name: cls
    for cls in (builtin.Greedy, builtin.Random, builtin.TopK, builtin.TopP, builtin.MinP, builtin.Typical, builtin.Beam)
}


@contextlib.contextmanager
def beside_builtins(strategies, distribution, version="0.0.0"):
    """The registry sees `strategies` from `distribution` and the built-ins from chargen, nothing else."""
    with registered(strategies, distribution=distribution, version=version):
        with registered(BUILTINS, distribution="chargen", hide_installed=False):
            yield


class Shout(TokenSampler):
    name = "shout"
    description = "always the last character of the vocabulary"

    def sample(self, logits, context):
        return np.full(logits.shape[0], logits.shape[-1] - 1)


class WrongShape(TokenSampler):
    name = "wrong-shape"
    description = "returns one id too many"

    def sample(self, logits, context):
        return np.zeros(logits.shape[0] + 1, np.int64)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a module to an importable folder; it is forgotten again after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


WHISPER_SOURCE = """
import numpy as np
from chargen.sampling import TokenSampler

class Whisper(TokenSampler):
    name = "whisper"
    description = "always id 0"

    def sample(self, logits, context):
        return np.zeros(logits.shape[0], np.int64)
"""


def test_available_reads_metadata_without_importing(plugin_module):
    module = plugin_module("lazy_whisper", WHISPER_SOURCE)
    with registered({"whisper": f"{module}:Whisper"}, distribution="chargen-whisper", version="2.1"):
        info = available()["whisper"]
        assert (info.name, info.value, info.distribution) == ("whisper", "lazy_whisper:Whisper", "chargen-whisper")
        assert info.version == "2.1"
        assert module not in sys.modules
        assert load("whisper").cls.__module__ == module
        assert module in sys.modules


def test_load_imports_once_and_accepts_any_case():
    with registered({"shout": Shout}):
        assert load("shout") is load(" SHOUT ")
        assert load("shout").info.label == "strategy 'shout' (from test-plugins 0.0.0)"


def test_registered_hides_the_installed_and_restores_them_afterwards():
    before = available()
    with registered({"shout": Shout}):
        assert list(available()) == ["shout"]
    assert available() == before and "shout" not in before


def test_unknown_name_lists_the_installed_strategies():
    with registered(BUILTINS):
        message = "unknown sampling strategy 'topk'; did you mean 'top-k'\\? installed: "
        with pytest.raises(ChargenError, match=message + "beam, greedy, min-p, random, top-k, top-p, typical"):
            load("topk")


def test_a_name_claimed_by_two_distributions_names_both_and_the_rest_still_load():
    with registered({"shout": Shout, "greedy": builtin.Greedy}, distribution="alpha", version="1.0"):
        with registered({"shout": WrongShape}, distribution="beta", version="2.0", hide_installed=False):
            message = "'shout' is registered by more than one distribution: alpha 1.0 .* and beta 2.0 "
            with pytest.raises(ChargenError, match=message):
                load("shout")
            assert load("greedy").cls is builtin.Greedy
            assert available()["shout"].distribution == "alpha"


@pytest.mark.parametrize(
    "source, problem",
    [
        ("import numpy\nraise ImportError('needs scipy')\n", "ImportError: needs scipy"),
        ("BROKEN = None\n", "AttributeError: module 'broken_plugin' has no attribute 'Broken'"),
    ],
)
def test_a_broken_import_is_reported_in_one_line_and_the_others_still_load(plugin_module, source, problem):
    module = plugin_module("broken_plugin", source)
    with beside_builtins({"broken": f"{module}:Broken"}, distribution="chargen-broken", version="0.3"):
        with pytest.raises(StrategyError) as caught:
            load("broken")
        assert str(caught.value) == (
            f"strategy 'broken' (from chargen-broken 0.3) failed to import from broken_plugin:Broken: {problem}"
        )
        assert load("top-k").cls is builtin.TopK


def test_a_registration_names_a_module_and_a_dotted_attribute_as_entry_points_do():
    with registered({"greedy": "chargen.sampling:builtin.Greedy"}):
        assert load("greedy").cls is builtin.Greedy


def test_describe_all_marks_the_broken_one_and_describes_the_rest():
    with beside_builtins({"missing": "no_such_module_for_chargen:Thing"}, distribution="chargen-missing"):
        descriptions = {d.info.name: d for d in describe_all()}
    assert list(descriptions) == sorted(descriptions)
    assert "ModuleNotFoundError" in descriptions["missing"].error and "chargen-missing" in descriptions["missing"].error
    top_k = descriptions["top-k"]
    assert top_k.error is None and top_k.kind == "token" and top_k.stochastic
    assert [option.name for option in top_k.options] == ["k"] and top_k.description == builtin.TopK.description
    assert descriptions["beam"].kind == "sequence" and not descriptions["beam"].stochastic


class Misnamed(Shout):
    name = "yell"


@pytest.mark.parametrize(
    "target, message",
    [
        (Misnamed, "its class declares name 'yell'; the entry-point name and `name` must match"),
        (dict, "is not a subclass of chargen.sampling.TokenSampler or SequenceSampler"),
        ("chargen.sampling.builtin:_require_count", "is not a subclass"),
    ],
)
def test_a_registration_that_breaks_the_contract_is_refused(target, message):
    with registered({"shout": target}):
        refusal = f"strategy 'shout' \\(from test-plugins 0.0.0\\) breaks the strategy contract: .*{message}"
        with pytest.raises(StrategyError, match=refusal):
            load("shout")


def test_create_builds_a_guarded_instance_from_parsed_options():
    with registered(BUILTINS):
        strategy = load("top-k").create({"k": 2})
    assert strategy.strategy.get_config() == {"k": 2} and strategy.stochastic and strategy.kind == "token"
    with pytest.raises(ChargenError, match="Received: k=0"):
        load("top-k").create({"k": 0})


def test_create_blames_the_strategy_for_an_unexpected_constructor_error():
    with registered({"shout": Shout}):
        message = "strategy 'shout' \\(from test-plugins 0.0.0\\) could not be created: TypeError"
        with pytest.raises(StrategyError, match=message):
            load("shout").create({"volume": 11})


def test_a_loaded_strategy_that_breaks_the_output_contract_is_named():
    with registered({"wrong-shape": WrongShape}, distribution="chargen-wrong", version="0.1"):
        strategy = load("wrong-shape").create()
    message = "^strategy 'wrong-shape' \\(from chargen-wrong 0.1\\) returned ids of shape \\(3,\\) where \\(2\\)"
    with pytest.raises(StrategyError, match=message + " was due$"):
        strategy.sample(np.zeros((2, 3)), context(2))


def test_chargen_registers_every_builtin_under_its_own_name():
    entry_points = importlib.metadata.distribution("chargen").entry_points.select(group="chargen.samplers")
    assert {entry_point.name: entry_point.load() for entry_point in entry_points} == BUILTINS


def test_listing_the_installed_strategies_imports_none_of_them():
    code = (
        "import sys; from chargen.sampling import registry; names = registry.available(); "
        "print('greedy' in names, 'chargen.sampling.builtin' in sys.modules)"
    )
    assert run_python(code).split() == ["True", "False"]
