"""The built-in strategies, the shared helpers and the output checks, on crafted logits: no model.

The fixed distribution below has a known nucleus, min-p set and typical set, so membership and the
renormalised mass can be checked exactly; frequencies over many draws are checked within 4-5 sigma.
"""

import itertools
import subprocess
import sys

import numpy as np
import pytest

import chargen.sampling
from chargen.errors import ChargenError
from chargen.sampling import (
    GuardedStrategy,
    Option,
    SamplingContext,
    SequenceResult,
    SequenceSampler,
    StrategyError,
    TokenSampler,
    categorical,
    check_sequence_output,
    check_token_output,
    class_problems,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    keep_typical,
    log_softmax,
    parse_options,
    softmax,
)
from chargen.sampling.builtin import Beam, Greedy, MinP, Random, TopK, TopP, Typical
from chargen.testing import StubModel
from chargen.vocab import Vocabulary

VOCAB = Vocabulary("abcdefgh")
PROBABILITIES = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.06, 0.04, 0.03])
LOGITS = np.log(PROBABILITIES)
DRAWS = 40_000
TOLERANCE = 0.012  # about 5 standard deviations of a frequency near 0.3 over DRAWS draws


def context(batch: int, seed: int = 0, step: int = 0, vocab: Vocabulary = VOCAB, ids=None) -> SamplingContext:
    """A context as the host builds it; the ids so far default to one 0 per row."""
    ids = np.zeros((batch, 1), np.int64) if ids is None else ids
    return SamplingContext(step=step, ids=ids, rng=np.random.default_rng(seed), vocab=vocab)


def run_python(code: str) -> str:
    """What `code` prints in a fresh interpreter: for checks on what an import pulls in."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def renormalised(kept: list[int]) -> np.ndarray:
    expected = np.zeros_like(PROBABILITIES)
    expected[kept] = PROBABILITIES[kept] / PROBABILITIES[kept].sum()
    return expected


def typical_set(probabilities: np.ndarray, mass: float) -> list[int]:
    """Locally typical set written plainly, one row, to compare the vectorised filter with."""
    entropy = -sum(p * np.log(p) for p in probabilities if p > 0)
    surprise = [-np.log(p) if p > 0 else np.inf for p in probabilities]
    ranked = sorted(range(len(probabilities)), key=lambda i: abs(surprise[i] - entropy))
    kept, total = [], 0.0
    for i in ranked:
        kept.append(i)
        total += probabilities[i]
        if total >= mass:
            break
    return sorted(kept)


# The typical set of PROBABILITIES at mass 0.5: entropy is 1.90 nats, so surprise near 1.9 ranks first.
CASES = {
    "random": (Random(), list(range(8))),
    "top-k": (TopK(k=3), [0, 1, 2]),
    "top-p": (TopP(p=0.6), [0, 1, 2]),  # 0.30 + 0.20 = 0.50 < 0.6, adding 0.15 crosses it
    "min-p": (MinP(p=0.35), [0, 1, 2, 3]),  # threshold 0.35 * 0.30 = 0.105
    "typical": (Typical(p=0.5), typical_set(PROBABILITIES, 0.5)),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_draws_only_from_the_kept_set_with_its_renormalised_mass(case):
    strategy, kept = CASES[case]
    ids = strategy.sample(np.tile(LOGITS, (DRAWS, 1)), context(DRAWS))
    frequencies = np.bincount(ids, minlength=len(VOCAB)) / DRAWS
    assert set(np.unique(ids)) == set(kept)
    assert np.abs(frequencies - renormalised(kept)).max() < TOLERANCE


def test_typical_set_of_the_crafted_distribution_drops_the_most_likely_character():
    assert CASES["typical"][1] == [1, 2, 3, 4]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_seed_same_ids_other_seed_other_ids(case):
    strategy, _ = CASES[case]
    logits = np.tile(LOGITS, (200, 1))
    first = strategy.sample(logits, context(200, seed=5))
    assert np.array_equal(strategy.sample(logits, context(200, seed=5)), first)
    assert not np.array_equal(strategy.sample(logits, context(200, seed=6)), first)


def test_greedy_is_argmax_of_each_row():
    logits = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    assert np.array_equal(Greedy().sample(logits, context(6)), logits.argmax(axis=-1))
    assert not Greedy.stochastic and not Beam.stochastic and TopK.stochastic


# ---------------------------------------------------------------------------------------------- filters


@pytest.fixture
def random_logits():
    logits = np.random.default_rng(1).normal(0, 2, size=(50, 20))
    logits[0, 3] = -np.inf  # an already filtered character must stay filtered
    return logits


def kept(filtered: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(np.isfinite(row))) for row in filtered]


@pytest.mark.parametrize("k", [1, 5, 19, 20, 30])
def test_keep_top_k_keeps_exactly_the_k_largest(random_logits, k):
    logits = np.where(np.isfinite(random_logits), random_logits, -50.0)
    expected = [set(np.argsort(-row)[:k]) for row in logits]
    assert kept(keep_top_k(logits, k)) == expected


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_keep_top_p_keeps_the_smallest_nucleus_reaching_p(random_logits, p):
    expected = []
    for row in softmax(random_logits):
        order = np.argsort(-row)
        count = int(np.searchsorted(np.cumsum(row[order]), p) + 1)  # first prefix whose mass reaches p
        expected.append(set(order[:count]))
    assert kept(keep_top_p(random_logits, p)) == expected


@pytest.mark.parametrize("p", [0.01, 0.2, 1.0])
def test_keep_min_p_keeps_characters_above_p_times_the_best(random_logits, p):
    probabilities = softmax(random_logits)
    expected = [set(np.flatnonzero(row >= p * row.max())) for row in probabilities]
    assert kept(keep_min_p(random_logits, p)) == expected


@pytest.mark.parametrize("p", [0.2, 0.9])
def test_keep_typical_matches_the_plain_definition(random_logits, p):
    expected = [set(typical_set(row, p)) for row in softmax(random_logits)]
    assert kept(keep_typical(random_logits, p)) == expected


def test_filters_compose_and_leave_their_input_alone(random_logits):
    before = random_logits.copy()
    both = keep_top_p(keep_top_k(random_logits, 4), 0.5)
    assert all(a <= b for a, b in zip(kept(both), kept(keep_top_k(random_logits, 4))))
    for keep in (keep_top_k, keep_top_p, keep_min_p, keep_typical):
        keep(random_logits, 3 if keep is keep_top_k else 0.5)
    assert np.array_equal(random_logits, before)


# ---------------------------------------------------------------------------------------------- helpers


def test_softmax_is_stable_for_huge_logits_and_zero_for_minus_inf():
    probabilities = softmax(np.array([[1000.0, 1000.0, -np.inf]]))
    assert np.allclose(probabilities, [[0.5, 0.5, 0.0]])
    assert np.allclose(log_softmax(np.array([[1000.0, 1000.0]])), np.log(0.5))


@pytest.mark.parametrize(
    "row, problem",
    [
        ([0.0, np.nan], "row 1 contain NaN"),
        ([0.0, np.inf], "row 1 contain \\+inf"),
        ([-np.inf, -np.inf], "row 1 are all -inf"),
    ],
)
def test_softmax_refuses_logits_with_nothing_sensible_to_pick(row, problem):
    logits = np.array([[0.0, 1.0], row])
    for use in (lambda: softmax(logits), lambda: log_softmax(logits), lambda: Greedy().sample(logits, context(2))):
        with pytest.raises(StrategyError, match=problem):
            use()


def test_categorical_never_picks_zero_weight_and_accepts_unnormalised_weights():
    weights = np.tile([0.0, 3.0, 0.0, 1.0, 0.0], (20_000, 1))
    ids = categorical(weights, np.random.default_rng(0))
    assert set(np.unique(ids)) == {1, 3}
    assert abs(np.mean(ids == 1) - 0.75) < TOLERANCE


# ---------------------------------------------------------------------------------------------- beam


def greedy_decode(model: StubModel, prime_ids: np.ndarray, length: int) -> np.ndarray:
    state = model.read_prime(prime_ids)
    logits, state = model.step(prime_ids[:, -1], state)
    chosen = []
    for _ in range(length):
        chosen.append(logits.argmax(axis=-1))
        logits, state = model.step(chosen[-1], state)
    return np.stack(chosen, axis=1)


def sequence_log_probability(model: StubModel, prime_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Teacher-forced total log-probability of ids int[batch, length] after the prime."""
    state = model.read_prime(prime_ids)
    logits, state = model.step(prime_ids[:, -1], state)
    total = np.zeros(len(ids))
    for position in range(ids.shape[1]):
        total += log_softmax(logits)[np.arange(len(ids)), ids[:, position]]
        logits, state = model.step(ids[:, position], state)
    return total


def beam_search(width: int, model: StubModel, prime_ids: np.ndarray, length: int) -> SequenceResult:
    state = model.read_prime(prime_ids)
    return Beam(width=width).generate(model.step, state, prime_ids, length, context(len(prime_ids), vocab=model.vocab))


PRIMES = np.array([[0, 1, 2], [3, 3, 1], [2, 0, 0]])


def test_beam_of_width_one_is_greedy_decoding():
    model = StubModel(6)
    result = beam_search(1, model, PRIMES, 12)
    assert np.array_equal(result.ids, greedy_decode(model, PRIMES, 12))


def test_beam_scores_are_the_true_log_probabilities_of_its_candidates_best_first():
    model = StubModel(5, seed=3)
    result = beam_search(4, model, PRIMES, 6)
    assert result.candidates.shape == (3, 4, 6) and result.scores.shape == (3, 4)
    assert np.array_equal(result.ids, result.candidates[:, 0])
    assert np.all(np.diff(result.scores, axis=1) <= 0)
    for beam in range(4):
        truth = sequence_log_probability(model, PRIMES, result.candidates[:, beam])
        assert np.allclose(result.scores[:, beam], truth)


def test_wide_enough_beam_finds_the_most_probable_sequence():
    model, length = StubModel(3, seed=4), 4
    everything = np.array(list(itertools.product(range(3), repeat=length)))
    prime = np.array([[1, 2]])
    best = everything[sequence_log_probability(model, np.repeat(prime, len(everything), 0), everything).argmax()]
    assert np.array_equal(beam_search(27, model, prime, length).ids[0], best)


class Myopic:
    """After 'c' the likeliest next character is 'a', but every continuation of 'a' is a coin toss,
    while 'b' is almost always followed by 'b': greedy takes 'a' (0.6 * 1/3), beam finds 'bb' (0.4 * 0.98)."""

    vocab = Vocabulary("abc")
    table = np.log(np.array([[1 / 3, 1 / 3, 1 / 3], [0.01, 0.98, 0.01], [0.6, 0.4, 1e-9]]))

    def step(self, ids, state):
        return self.table[ids], [state[0] + 1]


def test_beam_beats_myopic_greedy_decoding():
    model, prime = Myopic(), np.array([[2]])
    state = [np.zeros((1, 1))]
    greedy_ids = np.array([[0, 0]])
    beam = Beam(width=2).generate(model.step, state, prime, 2, context(1, vocab=model.vocab))
    assert beam.ids.tolist() == [[1, 1]]
    assert beam.scores[0, 0] > sum(model.table[[2, 0], greedy_ids[0]])


def test_beam_rows_do_not_interfere():
    model = StubModel(6, seed=2)
    together = beam_search(3, model, PRIMES, 8)
    for row in range(len(PRIMES)):
        alone = beam_search(3, model, PRIMES[row : row + 1], 8)
        assert np.array_equal(alone.candidates[0], together.candidates[row])


# ---------------------------------------------------------------------------------------------- options


class Knobs(TokenSampler):
    """A strategy with one option of every type, to exercise parsing."""

    name = "knobs"
    description = "test strategy"
    options = (
        Option("count", int, 3, "an int"),
        Option("scale", float, 0.5, "a float"),
        Option("label", str, "x", "a str"),
        Option("flag", bool, False, "a bool"),
    )

    def __init__(self, count=3, scale=0.5, label="x", flag=False):
        self.count, self.scale, self.label, self.flag = count, scale, label, flag

    def sample(self, logits, context):
        return logits.argmax(axis=-1)


def test_parse_options_converts_each_type():
    pairs = ["count=7", "scale=1e-2", "label=a=b ", "flag=YES"]
    assert parse_options(Knobs, pairs) == {"count": 7, "scale": 0.01, "label": "a=b ", "flag": True}
    assert parse_options(TopK, ["k=5"]) == {"k": 5}
    assert parse_options(TopK, []) == {}


@pytest.mark.parametrize("word, value", [("true", True), ("1", True), ("No", False), ("0", False), ("false", False)])
def test_bool_options_take_the_usual_words(word, value):
    assert parse_options(Knobs, [f"flag={word}"]) == {"flag": value}


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["count=2.5"], "option 'count' takes an int .*Received: count=2.5"),
        (["scale=abc"], "option 'scale' takes a finite float.*Received: scale=abc"),
        (["scale=nan"], "option 'scale' takes a finite float"),
        (["flag=maybe"], "option 'flag' takes a bool: true or false"),
        (
            ["size=3"],
            "strategy 'knobs' has no option 'size'; its options are count \\(int, default 3\\).*"
            "flag \\(bool, default false\\)",
        ),
        (["count"], "write a strategy option as NAME=VALUE, e.g. -o count=3. Received: 'count'"),
        (["=3"], "NAME=VALUE"),
        (["count=1", "count=2"], "option 'count' is given twice"),
    ],
)
def test_parse_options_says_what_is_wrong(pairs, message):
    with pytest.raises(ChargenError, match=message):
        parse_options(Knobs, pairs)


def test_a_strategy_without_options_says_so():
    with pytest.raises(ChargenError, match="strategy 'greedy' takes no options. Received: k=3"):
        parse_options(Greedy, ["k=3"])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TopK(k=0), "top-k needs a whole number k >= 1. Received: k=0"),
        (lambda: TopK(k=2.0), "Received: k=2.0"),
        (lambda: TopP(p=0), "top-p needs 0 < p <= 1. Received: p=0"),
        (lambda: MinP(p=1.5), "min-p needs 0 < p <= 1. Received: p=1.5"),
        (lambda: Typical(p=-0.1), "Received: p=-0.1"),
        (lambda: Beam(width=0), "beam needs a whole number width >= 1. Received: width=0"),
    ],
)
def test_constructors_refuse_values_out_of_range(build, message):
    with pytest.raises(ChargenError, match=message):
        build()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("top k", int, 1, ""), "identifier. Received: name='top k'"),
        (("k", list, [], ""), "type int, float, str or bool"),
        (("k", int, 1.5, ""), "Received: default=1.5"),
        (("k", int, True, ""), "Received: default=True"),
    ],
)
def test_option_declarations_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        Option(*arguments)


@pytest.mark.parametrize(
    "strategy", [Greedy(), Random(), TopK(k=3), TopP(p=0.5), MinP(p=0.2), Typical(p=0.7), Beam(width=2)]
)
def test_config_round_trip(strategy):
    config = strategy.get_config()
    assert type(strategy).from_config(config).get_config() == config
    assert sorted(config) == sorted(option.name for option in strategy.options)


def test_class_problems_lists_every_broken_declaration():
    class Sloppy(TokenSampler):
        name = "Sloppy"
        description = "two\nlines"
        options = (Option("k", int, 10, ""),)

        def __init__(self, k=5):
            self.k = k

    problems = " | ".join(class_problems(Sloppy))
    assert "lowercase" in problems and "one non-empty line" in problems
    assert "declares default 10 but the constructor's default is 5" in problems
    assert "does not override sample()" in problems
    assert class_problems(int) and class_problems(Greedy) == []


# ---------------------------------------------------------------------------------------------- output checks

LABEL = "strategy 'odd' (from odd-plugin 1.0)"


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.array([1, 2, 3]), "returned ids of shape \\(3,\\) where \\(2\\) was due"),
        (np.array([[1, 2]]), "of shape \\(1, 2\\)"),
        (np.array([1.0, 2.0]), "with dtype float64; ids are integers"),
        (np.array([np.nan, 1.0]), "with non-finite values"),
        (np.array([True, False]), "dtype bool"),
        (np.array([0, 8]), "outside the vocabulary \\[0, 8\\). Received: id 8"),
        (np.array([-1, 0]), "Received: id -1"),
    ],
)
def test_check_token_output_names_the_strategy_and_the_fault(ids, message):
    with pytest.raises(StrategyError, match=f"^strategy 'odd' \\(from odd-plugin 1.0\\) .*{message}"):
        check_token_output(ids, 2, 8, LABEL)


def test_check_token_output_returns_int64():
    assert check_token_output([3, 4], 2, 8, LABEL).dtype == np.int64


ZEROS = np.zeros((2, 3), np.int64)  # the right ids for batch 2, length 3


@pytest.mark.parametrize(
    "result, message",
    [
        (ZEROS, "returned a ndarray where a SequenceResult was due"),
        (SequenceResult(ids=np.zeros((2, 4), np.int64)), "ids of shape \\(2, 4\\) where \\(2, 3\\)"),
        (SequenceResult(ZEROS, candidates=ZEROS), "candidates of shape \\(2, 3\\) where \\(2, width, 3\\)"),
        (SequenceResult(ZEROS, scores=np.zeros((2, 1))), "scores without candidates"),
        (SequenceResult(ZEROS, np.zeros((2, 2, 3), np.int64), np.zeros((2, 3))), "scores of shape \\(2, 3\\)"),
        (SequenceResult(ZEROS, np.zeros((2, 1, 3), np.int64), np.full((2, 1), np.nan)), "NaN or \\+inf"),
        (SequenceResult(ids=np.full((2, 3), 9)), "outside the vocabulary"),
    ],
)
def test_check_sequence_output_names_the_strategy_and_the_fault(result, message):
    with pytest.raises(StrategyError, match=f"^strategy 'odd' .*{message}"):
        check_sequence_output(result, 2, 3, 8, LABEL)


def test_check_sequence_output_accepts_minus_inf_scores_of_impossible_candidates():
    result = SequenceResult(np.zeros((1, 2), np.int64), np.zeros((1, 2, 2), np.int64), np.array([[-1.0, -np.inf]]))
    assert check_sequence_output(result, 1, 2, 8, LABEL).scores[0, 1] == -np.inf


class Raising(TokenSampler):
    name = "raising"
    description = "fails"

    def sample(self, logits, context):
        raise KeyError("missing table")


def test_guarded_sample_turns_a_crash_into_a_one_line_strategy_error():
    guarded = GuardedStrategy(Raising(), LABEL)
    message = "^strategy 'odd' \\(from odd-plugin 1.0\\) failed at step 4: KeyError: 'missing table'$"
    with pytest.raises(StrategyError, match=message):
        guarded.sample(np.zeros((1, 8)), context(1, step=4))


def test_guarded_sample_reports_nan_logits_as_the_strategys_failure():
    message = "^strategy 'odd' .*failed at step 0: StrategyError: the logits of row 0 contain NaN"
    with pytest.raises(StrategyError, match=message):
        GuardedStrategy(Random(), LABEL).sample(np.full((1, 8), np.nan), context(1))


class Wasteful(SequenceSampler):
    """Calls step with more ids than state rows."""

    name = "wasteful"
    description = "breaks the step contract"

    def generate(self, step, state, prime_ids, length, context):
        step(np.zeros(len(prime_ids) + 1, np.int64), state)


def test_guarded_generate_blames_the_strategy_for_misusing_step():
    model, prime_ids = StubModel(4), np.zeros((2, 1), np.int64)
    guarded = GuardedStrategy(Wasteful(), LABEL)
    with pytest.raises(StrategyError, match="called step with 3 ids but state arrays with \\[2\\] rows"):
        guarded.generate(model.step, model.initial_state(2), prime_ids, 3, context(2, vocab=model.vocab))


def test_guarded_generate_lets_the_hosts_own_step_errors_through_unchanged():
    def broken_step(ids, state):
        raise MemoryError("out of memory")

    guarded = GuardedStrategy(Beam(width=2), LABEL)
    with pytest.raises(MemoryError, match="out of memory"):
        guarded.generate(broken_step, [np.zeros((1, 2))], np.zeros((1, 1), np.int64), 3, context(1))


# ---------------------------------------------------------------------------------------------- read-only ids


class Rewriter(TokenSampler):
    """Writes into the ids the host hands over."""

    name = "rewriter"
    description = "breaks the read-only rule"

    def sample(self, logits, context):
        context.ids[:, -1] = 0
        return logits.argmax(axis=-1)


class PrimeRewriter(SequenceSampler):
    """Writes into the prime ids (or, with `through_context`, into `context.ids`) of a sequence call."""

    name = "prime-rewriter"
    description = "breaks the read-only rule"
    stochastic = False

    def __init__(self, through_context=False):
        self.through_context = through_context

    def generate(self, step, state, prime_ids, length, context):
        (context.ids if self.through_context else prime_ids)[:, 0] = 0
        return SequenceResult(ids=np.zeros((prime_ids.shape[0], length), np.int64))


def test_the_context_holds_a_read_only_view_of_the_hosts_own_array():
    history = np.arange(10).reshape(2, 5)  # the host's buffer, filled as generation goes
    shown = context(2, ids=history[:, :3]).ids
    assert not shown.flags.writeable and np.shares_memory(shown, history)
    history[:, 3] = 7  # the host still writes into its own buffer, during and after the step
    assert history.flags.writeable and history[:, 3].tolist() == [7, 7]
    whole = context(2, ids=history).ids  # a view also when the host hands over the whole array
    history[0, 0] = 9
    assert whole[0, 0] == 9 and not whole.flags.writeable and history.flags.writeable


READ_ONLY = "ValueError: .*read-only.* \\(context.ids and prime_ids belong to the host; change a copy\\)$"


def test_a_strategy_that_writes_into_context_ids_stops_with_its_name_in_one_line():
    history = np.arange(6).reshape(2, 3)
    with pytest.raises(StrategyError, match=f"^strategy 'odd' \\(from odd-plugin 1.0\\) failed at step 2: {READ_ONLY}"):
        GuardedStrategy(Rewriter(), LABEL).sample(np.zeros((2, 8)), context(2, step=2, ids=history))
    assert history.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("through_context", [False, True], ids=["prime_ids", "context.ids"])
def test_a_sequence_strategy_that_writes_into_the_prime_stops_with_its_name(through_context):
    rows = np.arange(6).reshape(2, 3)
    guarded = GuardedStrategy(PrimeRewriter(through_context), LABEL)
    with pytest.raises(StrategyError, match=f"^strategy 'odd' \\(from odd-plugin 1.0\\) failed: {READ_ONLY}"):
        guarded.generate(lambda ids, state: (np.zeros((len(ids), 8)), state), [], rows, 3, context(2, ids=rows))
    assert rows.tolist() == [[0, 1, 2], [3, 4, 5]] and rows.flags.writeable


# ---------------------------------------------------------------------------------------------- the package

PUBLIC_NAMES = """
    ChargenError GuardedStrategy LoadedStrategy Option SamplingContext SequenceResult SequenceSampler StepFunction
    Strategy StrategyDescription StrategyError StrategyInfo TokenSampler available categorical check_logits
    check_sequence_output check_token_output class_problems describe_all keep_min_p keep_top_k keep_top_p
    keep_typical load log_softmax parse_options softmax
""".split()


def test_the_public_names_plugins_import_are_all_there():
    assert sorted(chargen.sampling.__all__) == sorted(PUBLIC_NAMES)
    assert all(hasattr(chargen.sampling, name) for name in PUBLIC_NAMES)


def test_sampling_imports_no_tensorflow():
    code = "import sys, chargen.sampling, chargen.sampling.builtin, chargen.testing; print('tensorflow' in sys.modules)"
    assert run_python(code).strip() == "False"
