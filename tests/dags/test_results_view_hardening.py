"""The results view's headers, links planted under the results root, and who sees the capacity section."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import TYPE_CHECKING, Any

from tests.dags.test_results_view import DAG_ID, api_client, finished_run, token_for  # noqa: F401 - fixture

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

SERVED = ("results.jsonl", "rejects.jsonl", "manifest.json")


def _viewer() -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for('vic', 'viewer')}"}


def test_every_response_says_nosniff_and_pages_carry_a_strict_policy(
    finished_run: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = api_client(monkeypatch, all_admins=False)
    run_url = f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}"
    for url in (run_url, f"/openai-batch/dags/{DAG_ID}"):
        page = client.get(url, headers=_viewer())
        assert page.status_code == 200
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        # Framed by Airflow's own UI (same origin) and by nothing else.
        assert "frame-ancestors 'self'" in policy
        # The page's one inline stylesheet is exactly the one the policy's hash allows ...
        (style,) = re.findall(r"<style>(.*?)</style>", page.text, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in policy
        # ... so is its one script (the in-frame link handler), and nothing else runs: one
        # script-src hash, no other script, no inline handlers, no style attributes.
        (script,) = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert re.findall(r"script-src ([^;]*)", policy) == [f"'sha256-{digest}'"]
        assert page.text.count("<script") == 1
        assert not re.search(r"\son[a-z]+=", page.text)
        assert " style=" not in page.text
    for name in SERVED:
        served = client.get(f"{run_url}/files/0/{name}", headers=_viewer())
        assert served.status_code == 200, name
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        assert served.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    # Refusals too.
    for response in (client.get(f"{run_url}/files/0/plan.json", headers=_viewer()), client.get(run_url)):
        assert response.status_code in (401, 404)
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_links_planted_in_a_results_folder_are_not_served(
    finished_run: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    client = api_client(monkeypatch, all_admins=False)
    run_url = f"/openai-batch/runs/{DAG_ID}/{finished_run['run_id']}"
    (folder,) = [
        m.parent for m in finished_run["results"].rglob("alpha/manifest.json") if "_state" not in m.parts
    ]
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the view\n")
    inside = folder.parent / "inside.json"  # under the results root, but reached through a link
    inside.write_text('{"planted": true}\n')
    (folder / "results.jsonl").unlink()
    (folder / "results.jsonl").symlink_to(secret)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(inside)
    (folder / "rejects.jsonl").unlink()
    os.link(inside, folder / "rejects.jsonl")  # a hard link: the same content under another name
    for name in SERVED:
        response = client.get(f"{run_url}/files/0/{name}", headers=_viewer())
        assert response.status_code == 404, (name, response.text[:100])
        assert "planted" not in response.text
        assert "not for the view" not in response.text


def test_the_capacity_section_only_for_readers_of_the_openai_batch_dag(
    monkeypatch: pytest.MonkeyPatch, airflow_db: None
) -> None:
    """
    The simple auth manager's roles apply to every DAG alike, so its DAG check is made to answer
    per DAG id here: ``olga`` may read ``reports`` only, as a per-DAG role of another auth manager
    would allow.
    """
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    real = SimpleAuthManager.is_authorized_dag

    def per_dag(self: Any, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if user.get_name() == "olga":
            return details is not None and details.id == "reports"
        return bool(real(self, method=method, user=user, access_entity=access_entity, details=details))

    monkeypatch.setattr(SimpleAuthManager, "is_authorized_dag", per_dag)
    client = api_client(monkeypatch, all_admins=False)
    olga = {"Authorization": f"Bearer {token_for('olga', 'viewer')}"}
    page = client.get("/openai-batch/dags/reports", headers=olga)
    assert page.status_code == 200, page.text[:300]
    assert "reports: recent runs" in page.text
    assert "capacity" not in page.text.lower()
    assert client.get(f"/openai-batch/dags/{DAG_ID}", headers=olga).status_code == 403
    # A reader of openai_batch sees it, on the page of another DAG too.
    page = client.get("/openai-batch/dags/reports", headers=_viewer())
    assert '<section class="capacity">' in page.text


class _FakeManager:
    """An auth manager that answers the DAG check per DAG id."""

    def __init__(self, readable: set[str]) -> None:
        self.readable = readable

    def is_authorized_dag(
        self, *, method: str, user: Any, details: Any = None, access_entity: Any = None
    ) -> bool:
        return method == "GET" and details is not None and details.id in self.readable


def test_may_see_capacity_asks_about_the_openai_batch_dag() -> None:
    from openai_batch.ui.app import may_see_capacity

    user: Any = object()
    assert may_see_capacity(user, _FakeManager({"openai_batch"})) is True  # type: ignore[arg-type]
    assert may_see_capacity(user, _FakeManager({"reports"})) is False  # type: ignore[arg-type]
