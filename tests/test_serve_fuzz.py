"""Schemathesis against the live API (issue 17): property-based requests generated from the
service's own OpenAPI document, sent with the token to a real ``ichdet serve`` on loopback. No
answer may be a 5xx, and every answer must match what the document says (status code, content
type, body schema). A study is uploaded first, so the study routes also meet a real id."""

import pytest

httpx = pytest.importorskip("httpx", reason="the 'dev' extra is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from serve_fixtures import LiveServer, build_model_and_studies  # noqa: E402

TOKEN = "fuzz-" + "k" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model, studies = build_model_and_studies(root)
    token = root / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    args = ["--token-file", token, "--max-upload-mb", "4"]
    server = LiveServer(model, root / "store", *args)
    try:
        files = [
            ("files", ("x", p.read_bytes(), "application/dicom")) for p in studies.popitem()[1]
        ]
        answer = httpx.post(server.url + "/api/v1/studies", files=files, headers=AUTH)
        assert answer.status_code == 202
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(live_url):
    return schemathesis.openapi.from_url(live_url + "/openapi.json", headers=AUTH)


@pytest.mark.slow
def test_the_api_keeps_to_its_schema_under_fuzzing(api_schema, live_url):
    """Every operation of the document, 30 generated requests each (Hypothesis through
    Schemathesis' strategies; its pytest plugin does not run under this pytest). All checks but
    "schema-valid data is accepted": a schema-valid upload of bytes that are no CT is refused
    (422) by design, as is a well-formed id of no study (404)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def one(case):
            case.call_and_validate(
                base_url=live_url, headers=AUTH, excluded_checks=[positive_data_acceptance]
            )

        one()


def test_the_schema_itself_needs_the_token(live_url):
    assert httpx.get(live_url + "/openapi.json").status_code == 401
    paths = httpx.get(live_url + "/openapi.json", headers=AUTH).json()["paths"]
    assert "/api/v1/studies" in paths and "/api/v1/audit" in paths
