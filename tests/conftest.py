"""Test setup: 8 fake CPU devices for mesh tests, and the shared data folder."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("JAXLM_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session", autouse=True)
def token_cache(tmp_path_factory) -> Path:
    """Tokenised corpora (jaxlm.data.token_store) go to a folder of the test session, not to the
    user's ~/.cache; subprocesses inherit it."""
    if not os.environ.get("JAXLM_TOKEN_CACHE"):
        os.environ["JAXLM_TOKEN_CACHE"] = str(tmp_path_factory.mktemp("token_cache"))
    return Path(os.environ["JAXLM_TOKEN_CACHE"])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data, or $JAXLM_DATA); fails clearly when missing."""
    path = _shared_data()
    if not (path / "tinyshakespeare" / "input.txt").is_file():
        pytest.fail(f"The shared data folder was not found at {path}. Tests need the real "
                    "datasets: put the shared/ folder beside the repository (../shared/data) or "
                    "set JAXLM_DATA to a folder holding tinyshakespeare/, sst2/, sst5/ and trec/.")
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path, data_dir: Path) -> Path:
    """The first 40k characters of Tiny Shakespeare: enough for fast LM tests."""
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:40_000]
    p = tmp_path / "tiny.txt"
    p.write_text(text)
    return p


@pytest.fixture(scope="session")
def w(tmp_path_factory, data_dir: Path) -> Path:
    """The bad-input tests' workspace (tests/reliability_workspace.py), built once per session
    for the catalogue and the run-handling tests."""
    from reliability_workspace import build_workspace
    return build_workspace(tmp_path_factory.mktemp("catalogue"), data_dir)


@pytest.fixture
def count_evaluations(monkeypatch):
    """`count_evaluations(TaskClass)`: a list that gets the number of batches of every
    `TaskClass.evaluate` call from then on (the evaluation still runs)."""
    def install(task_cls) -> list[int]:
        calls: list[int] = []
        original = task_cls.evaluate

        def counting(self, evaluator, params, batches):
            calls.append(len(batches))
            return original(self, evaluator, params, batches)

        monkeypatch.setattr(task_cls, "evaluate", counting)
        return calls

    return install
