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


def test_a_remembered_call_advances_the_generators_as_the_call_does():
    """A shuffling loader draws its order and a seed from its generator, and the global generator is the
    caller's: after a remembered call both are where the call itself leaves them."""
    net = _net()
    loader = _loader(shuffle=True)

    def call():
        loader.generator.manual_seed(7)
        torch.manual_seed(11)
        result = profile_activations(net, loader, max_samples=20)
        return result, loader.generator.get_state(), torch.get_rng_state(), torch.rand(3)

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
    assert _same(first, second) and first["fc3"] is not second["fc3"]
    assert memo.statistics["not remembered"] == 2 and _counts() == (0, 0)


def test_seeded_draws_alike_and_gives_the_generators_back():
    torch.manual_seed(123)
    outside = torch.get_rng_state()
    with memo.seeded():
        first = (torch.rand(2), np.random.rand(2))
    assert torch.equal(torch.get_rng_state(), outside)
    torch.rand(5)
    with memo.seeded():
        second = (torch.rand(2), np.random.rand(2))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
