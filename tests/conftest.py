"""Shared pytest fixtures."""
import pytest


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub (tests/hub_server.py) for one test. Some test modules set HF_HUB_OFFLINE=1,
    which huggingface_hub reads at import: the constant is switched off for this test only."""
    import huggingface_hub

    from hub_server import LocalHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with LocalHub(tmp_path / "hub") as server:
        yield server
