"""Fixtures of the API tests: one shared real server on a tiny random model, an openai client, an httpx client."""
import httpx
import pytest
from apiutil import API_KEY, FAST_ENGINE, MODEL, ServerProcess


@pytest.fixture(scope="session")
def server(checkpoint):
    """One shared server: API key, served name, max_num_seqs 4 + 4 queued (some flags given as ACTSERVE_* env)."""
    proc = ServerProcess(checkpoint("llama"), "--api-key", API_KEY, "--served-model-name", MODEL, *FAST_ENGINE,
                         env={"ACTSERVE_MAX_NUM_SEQS": "4", "ACTSERVE_MAX_QUEUED_REQUESTS": "4",
                              "ACTSERVE_KV_SINK": "16", "ACTSERVE_KV_LOCAL": "32", "ACTSERVE_KV_WINDOW": "32"})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c

