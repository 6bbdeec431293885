import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:  # until the package is installed (pip install -e .) or pytest gets pythonpath=src
    import latentwire  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real offline data (never copied into the repo): ../shared/data from the repo root."""
    path = (ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random llama and qwen2 HF folders with their own offline tokenizer (tests/tiny.py)."""
    from tiny import make_tiny  # tests/ is on sys.path (rootdir conftest)

    root = tmp_path_factory.mktemp("tiny_models")
    return {"llama": make_tiny("llama", root / "llama"), "qwen": make_tiny("qwen2", root / "qwen2")}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
