import os
import shutil
import subprocess
import sys

import pytest
import torch
from read_only import read_only_command, require_read_only_mounts

from int8lab import CorruptCheckpointError, Net, NetBN, NetWithBias, evaluate, trained_model
from int8lab import training as training_module


def test_float_net_reaches_95_percent_on_digits(float_net, digits_loaders):
    assert evaluate(float_net, digits_loaders[1]) >= 95.0


def test_models_have_the_lab_shapes():
    net, with_bias = Net(in_channels=3), NetWithBias(in_channels=1)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert with_bias(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert [name for name, p in net.named_parameters() if name.endswith("bias")] == []
    assert [name for name, p in with_bias.named_parameters() if name.endswith("bias")] == ["fc3.bias"]
    assert net.fc1.in_features == 16 * 5 * 5 and net.fc2.out_features == 84


def test_net_bn_has_a_batchnorm_after_each_convolution_and_a_cache_key_of_its_own():
    """NetBN (notebook 7) adds bn1 and bn2 to Net's layers; its checkpoint never shares a file with Net's."""
    net = NetBN(in_channels=1)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert (net.bn1.num_features, net.bn2.num_features) == (6, 16) and net.conv1.bias is None
    settings = training_module.TrainSettings()
    assert training_module.checkpoint_path("digits", NetBN, settings).name.startswith("NetBN-digits-")
    assert training_module.checkpoint_path("digits", Net, settings).name.startswith("Net-digits-")
    with pytest.raises(ValueError, match="bias and batch_norm"):
        trained_model("digits", bias=True, batch_norm=True, progress=False)


def test_second_call_loads_the_checkpoint_without_training(float_net, monkeypatch):
    def no_training(*_args, **_kwargs):
        raise AssertionError("trained again although a checkpoint exists")

    monkeypatch.setattr(training_module, "_train", no_training)
    reloaded = trained_model("digits", progress=False)
    for name, tensor in float_net.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name])


def _count_trainings(monkeypatch):
    calls = []
    real_train = training_module._train

    def counting(*args, **kwargs):
        calls.append(args)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training_module, "_train", counting)
    return calls


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_corrupt_checkpoint_is_rebuilt(float_net, monkeypatch, damage):
    settings = training_module.TrainSettings(epochs=1)
    model = trained_model("digits", settings=settings, progress=False)
    path = training_module.checkpoint_path("digits", Net, settings)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_byte":
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError):
        training_module.load_checkpoint(path, Net())
    calls = _count_trainings(monkeypatch)
    rebuilt = trained_model("digits", settings=settings, progress=False)
    assert len(calls) == 1
    assert torch.equal(rebuilt.fc1.weight, model.fc1.weight), "training is not deterministic"
    training_module.load_checkpoint(path, Net())  # the rewritten file is whole again


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "bias.pt"
    training_module.save_checkpoint(NetWithBias(), path)
    with pytest.raises(CorruptCheckpointError, match="does not fit Net"):
        training_module.load_checkpoint(path, Net())


def test_evaluate_counts_every_sample(digits_loaders):
    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, 0] = 1
            return logits

    test_loader = digits_loaders[1]
    zeros = (test_loader.dataset.tensors[1] == 0).sum().item()
    assert evaluate(AlwaysZero(), test_loader) == pytest.approx(100 * zeros / len(test_loader.dataset))


def test_no_training_mode_refuses_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path))
    monkeypatch.setenv(training_module.NO_TRAINING_ENV, "1")
    with pytest.raises(RuntimeError, match="grading never trains"):
        trained_model("digits", progress=False)


def _in_read_only_cache(cache, code: str) -> subprocess.CompletedProcess:
    """``code`` run by this Python in a child whose ``cache`` (INT8LAB_CACHE) is read-only, as a shared one is."""
    command = read_only_command(cache, [sys.executable, "-c", code])
    env = {**os.environ, "INT8LAB_CACHE": str(cache)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_read_only_cache_loads_its_model_and_a_missing_one_says_to_ask_the_instructor(float_net, tmp_path):
    """A shared cache that students cannot write: its model loads; a model it lacks is one clear error, which
    names the cache and the instructor, not an OSError from the lock file."""
    require_read_only_mounts()
    shared = tmp_path / "shared"
    # Whatever the session has trained, the shared copy holds Net and not NetWithBias, the model asked for below.
    shutil.copytree(
        training_module.cache_dir(), shared, ignore=shutil.ignore_patterns("*.lock", "simulated", "NetWithBias-*")
    )
    loaded = _in_read_only_cache(shared, "from int8lab import trained_model; trained_model('digits', progress=False)")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    missing = _in_read_only_cache(
        shared,
        "from int8lab import trained_model\n"
        "try:\n"
        "    trained_model('digits', bias=True, progress=False)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error, error.__cause__, error.__suppress_context__, sep='|')\n",
    )
    assert missing.returncode == 0, missing.stderr[-2000:]
    kind, message, cause, suppressed = missing.stdout.strip().split("|")
    assert kind == "CacheReadOnlyError", missing.stdout
    assert str(shared) in message and "ask your instructor" in message and "NetWithBias" in message
    # No "During handling of the above exception" chain under it in a notebook.
    assert cause == "None" and suppressed == "True"
