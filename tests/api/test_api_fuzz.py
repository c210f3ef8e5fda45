"""Schemathesis over /openapi.json: a bounded number of generated requests per operation, none may get a 5xx, and the
server is healthy afterwards."""
import httpx
import schemathesis
from apiutil import API_KEY, wait_idle
from hypothesis import HealthCheck, given, settings

EXAMPLES_PER_OPERATION = 25


def test_generated_requests_never_get_a_5xx(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    failures, seen = [], {}
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=server.url, headers=headers, timeout=120)
            seen.setdefault(operation.label, []).append(response.status_code)
            if response.status_code >= 500:
                failures.append((operation.label, case.body, response.status_code, response.text[:300]))
        check()
    assert not failures, failures
    assert 200 in seen["POST /v1/completions"] and 200 in seen["POST /v1/chat/completions"], seen
    assert httpx.get(server.url + "/health").status_code == 200
    m = wait_idle(server.url, timeout=120)
    assert m[("actserve:num_requests_running", ())] == 0 and m[("actserve:kv_cache_usage_perc", ())] == 0
