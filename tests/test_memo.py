"""The judge's memo of int8lab's pure functions: a remembered call gives what the call would have, and leaves
what it would have left (arguments, generators); nothing is remembered outside a judgement."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from int8lab import memo
from int8lab.models import Net
from int8lab.profiling import profile_activations
from int8lab.training import evaluate


@pytest.fixture(autouse=True)
def empty_memo():
    memo.forget()
    yield
    memo.forget()


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(in_channels=1).eval()


def _loader(shuffle: bool = False, seed: int = 3) -> DataLoader:
    """A new loader for each call, as ``load_data`` gives: iterating one draws from its generator."""
    images = torch.randn(48, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=shuffle, generator=generator)


def _counts() -> tuple[int, int]:
    return memo.statistics["remembered"], memo.statistics["computed"]


def _same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(np.array_equal(first[key], second[key]) for key in first)


def test_a_remembered_call_gives_an_equal_copy_of_its_own():
    net = _net()
    with memo.remembering():
        first = profile_activations(net, _loader(), max_samples=20)
        before = _counts()
        second = profile_activations(net, _loader(), max_samples=20)
        assert _counts() == (before[0] + 1, before[1])  # remembered, not computed
        assert _same(first, second)
        second["fc3"][:] = 1e9  # the caller's to change: the next call must not see it
        third = profile_activations(net, _loader(), max_samples=20)
    assert _same(first, third)


def test_an_argument_changed_in_place_is_computed_again():
    """By content, whatever way it changed: ``.data`` bumps no version counter."""
    net = _net()
    with memo.remembering():
        first = profile_activations(net, _loader(), max_samples=20)
        net.fc3.weight.data[0] += 1.0
        changed = profile_activations(net, _loader(), max_samples=20)
    assert not np.array_equal(first["fc3"], changed["fc3"])
    assert _same(changed, profile_activations(net, _loader(), max_samples=20))  # the same call, no memo


def test_a_call_that_changes_its_argument_runs_every_time():
    """``evaluate`` puts a training network in eval mode: a later call must do it again."""
    net = _net()
    with memo.remembering():
        net.train()
        first = evaluate(net, _loader())
        assert not net.training
        net.train()
        second = evaluate(net, _loader())
        assert first == second and not net.training
        assert memo.statistics["remembered"] == 0
        evaluate(net, _loader())  # in eval mode it changes nothing: remembered from here on
        evaluate(net, _loader())
    assert memo.statistics["remembered"] == 1


@pytest.mark.parametrize("own_generator", [True, False])
def test_a_remembered_call_advances_the_generators_as_the_call_does(own_generator):
    """A shuffling loader draws its order and a seed from its own generator, or from torch's global one when it
    has none: after a remembered call, both are where the call itself leaves them."""
    net = _net()
    loader = _loader(shuffle=True)
    if not own_generator:
        loader = DataLoader(loader.dataset, batch_size=16, shuffle=True)

    def call():
        if own_generator:
            loader.generator.manual_seed(7)
        torch.manual_seed(11)
        result = profile_activations(net, loader, max_samples=20)
        own = loader.generator.get_state() if own_generator else torch.zeros(1)
        return result, own, torch.get_rng_state(), torch.rand(3)

    plain = call()  # no memo
    with memo.remembering():
        call()
        before = _counts()
        remembered = call()
        assert _counts() == (before[0] + 1, before[1])
    assert _same(plain[0], remembered[0])
    assert torch.equal(plain[1], remembered[1]) and torch.equal(plain[2], remembered[2])
    assert torch.equal(plain[3], remembered[3])


def test_the_global_generator_is_part_of_the_key():
    """The same arguments after another draw from torch's generator may give another result: computed again."""
    net = _net()
    with memo.remembering():
        torch.manual_seed(1)
        profile_activations(net, _loader(), max_samples=20)
        torch.manual_seed(2)
        before = _counts()
        profile_activations(net, _loader(), max_samples=20)
    assert _counts() == (before[0], before[1] + 1)


def test_nothing_is_remembered_outside_a_judgement_or_for_an_argument_it_cannot_digest():
    net = _net()
    profile_activations(net, _loader(), max_samples=20)
    profile_activations(net, _loader(), max_samples=20)
    assert _counts() == (0, 0)
    batches = [(torch.zeros(2, 1, 32, 32), lambda: None)]  # a loader of anything iterable; a lambda pickles not
    with memo.remembering():
        first = profile_activations(net, batches, max_samples=2)
        second = profile_activations(net, batches, max_samples=2)
    assert _same(first, second)
    assert memo.statistics["not remembered"] == 2 and _counts() == (0, 0)


def test_seeded_draws_alike_and_gives_the_generators_and_the_engine_back():
    torch.manual_seed(123)
    outside, engine = torch.get_rng_state(), torch.backends.quantized.engine
    others = [e for e in torch.backends.quantized.supported_engines if e not in (engine, "none")]
    with memo.seeded():
        first = (torch.rand(2), np.random.rand(2))
        if others:
            torch.backends.quantized.engine = others[0]
    assert torch.equal(torch.get_rng_state(), outside) and torch.backends.quantized.engine == engine
    torch.rand(5)
    with memo.seeded():
        second = (torch.rand(2), np.random.rand(2))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_the_engine_is_remembered_only_where_its_setting_stays():
    """``torch_int8_model`` sets the quantized engine: called with another engine set, it runs every time (and
    sets it); with the engine it chooses already set, a copy of its first network computes the same logits."""
    from int8lab.engine import choose_engine, torch_int8_model

    net, images = _net(), torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    chosen = choose_engine()
    others = [e for e in torch.backends.quantized.supported_engines if e not in (chosen, "none")]
    try:
        with memo.remembering():
            torch.backends.quantized.engine = chosen
            first = torch_int8_model(net, _loader(), max_samples=20)
            second = torch_int8_model(net, _loader(), max_samples=20)
            assert memo.statistics["remembered"] == 1 and second is not first
            assert torch.equal(first(images), second(images))
            for other in others[:1]:
                for _ in range(2):
                    torch.backends.quantized.engine = other
                    torch_int8_model(net, _loader(), max_samples=20)
                    assert torch.backends.quantized.engine == chosen
                assert memo.statistics["remembered"] == 1
    finally:
        torch.backends.quantized.engine = chosen


class _Alarm(Exception):
    """Stands for the judge's CPU limit, raised by a signal handler wherever the time runs out."""


class _RingsWhenPickled:
    def __reduce__(self):
        raise _Alarm


def test_an_alarm_while_digesting_stops_the_call():
    """Caught as "cannot digest", the judge's CPU limit would let the call run on without a limit."""
    ran = []

    @memo.pure
    def costly(argument):
        ran.append(argument)
        return 1

    with memo.remembering(), pytest.raises(_Alarm):
        costly(_RingsWhenPickled())
    assert not ran


def test_a_call_on_more_bytes_than_a_digest_reads_runs_unremembered(monkeypatch):
    monkeypatch.setattr(memo, "MAX_DIGESTED_BYTES", 1000)
    net = _net()
    with memo.remembering():
        profile_activations(net, _loader(), max_samples=20)
        profile_activations(net, _loader(), max_samples=20)
    assert memo.statistics["not remembered"] == 2 and _counts() == (0, 0)
