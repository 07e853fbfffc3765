"""The OpenAPI document is what client generators read: every route names its request
and response models and the error envelope it can answer with."""

from httpx import AsyncClient


async def test_every_api_route_declares_its_models_and_errors(api: AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    envelope = spec["components"]["schemas"]
    operations = [
        (method, path, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
    ]
    assert len(operations) >= 24
    for method, path, op in operations:
        responses = op["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, (method, path)
        assert responses[success[0]].get("content"), (method, path)
        assert "422" not in responses, (method, path)
        assert {"400", "401"} <= set(responses), (method, path, sorted(responses))
        error_schema = responses["401"]["content"]["application/json"]["schema"]
        assert "error" in error_schema["properties"], (method, path)
        assert op.get("summary") or op.get("description"), (method, path)
    assert "HTTPValidationError" not in envelope


async def test_request_bodies_carry_examples(api: AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in ("ContactUpsertIn", "SendersIn", "UnsubscribeIn", "ImportIn"):
        assert schemas[name].get("examples"), name


async def test_interactive_docs_answer_at_docs_and_at_datamailers_api_docs(api: AsyncClient) -> None:
    for path in ("/docs", "/api-docs/"):
        response = await api.get(path)
        assert response.status_code == 200, path
        assert "swagger-ui" in response.text
        assert "/openapi.json" in response.text
