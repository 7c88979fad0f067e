"""Shared test set-up: quiet MindSpore logs, CPU device, fixtures for the tiny model config and its inputs."""
import os

os.environ.setdefault("GLOG_v", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _mindspore_cpu():
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture
def pynative():
    """Run the test in PyNative mode (no graph compile; right for shape and mask checks), then restore GRAPH_MODE."""
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def tiny_cfg():
    from tests.helpers import model_config
    return model_config("tiny")
