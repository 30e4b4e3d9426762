"""The /review page of the scoring service in a real headless Chromium (Debian's, driven by playwright).

The app runs under uvicorn on a loopback port against the session stack; a challenger is
registered in the real MLflow registry; the browser loads the pending list, opens the card, is
refused self-approval (403 shown) and approves with a reason; the audit row is read back from
Postgres. Skipped only if /usr/bin/chromium is absent.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import free_port
from principals import API_KEYS, key, principal

from riskloop.core.config import Settings

CHROMIUM = "/usr/bin/chromium"
ALICE, AUTHOR_KEY, SCORER = key("alice"), key("carol"), "scorer-key-1234567890ab"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed")


@contextmanager
def serve(app) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


@pytest.mark.slow
def test_review_page_lists_shows_refuses_self_approval_and_approves(settings: Settings) -> None:
    import xgboost as xgb
    from mlflow import MlflowClient
    from playwright.sync_api import expect
    from test_promotion import FEATURES, fresh_name, register, synth

    from serving.app import create_app
    from serving.config import ServingSettings

    train = synth(500, seed=3)
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(train[FEATURES], train["label"])
    name = fresh_name()
    register(settings, name, clf, ("champion", "challenger"), metrics={"auc_roc": 0.80, "average_precision": 0.30})
    author = "carol"  # a reviewer who trained this version
    v2 = register(settings, name, clf, ("challenger",), metrics={"auc_roc": 0.85, "average_precision": 0.28},
                  author=principal(author))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    client.set_model_version_tag(name, v2, "canary.share", "0.05")
    client.update_model_version(name, v2, description="# Model card: test\n\n## Intended use\nscoring payments")

    app_settings = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    app = create_app(app_settings, ServingSettings(api_keys=f"{API_KEYS},{SCORER}:scorer"))
    with serve(app) as base, browser() as b:
        page = b.new_page()
        page.goto(f"{base}/review")

        page.fill("#key", SCORER)  # a scorer may not read reviews
        page.click("#load")
        page.wait_for_selector("#message.error")
        assert "403" in page.text_content("#message")

        page.fill("#key", AUTHOR_KEY)
        page.click("#load")
        row = page.wait_for_selector(f'#pending tr[data-model="{name}"]')
        assert row.get_attribute("data-version") == v2
        assert "pending" in row.text_content() and author in row.text_content()
        row.query_selector("button.open").click()
        page.wait_for_selector("#card:not([hidden])")
        assert page.text_content("#card-title") == f"{name} v{v2}"
        assert page.text_content("#model-card") == "# Model card: test\n\n## Intended use\nscoring payments"
        auc = page.text_content('#metrics tr[data-metric="auc_roc"]')
        assert "0.8500" in auc and "0.8000" in auc and "+0.0500" in auc
        assert "-0.0200" in page.text_content('#metrics tr[data-metric="average_precision"]')
        assert "share = 0.05" in page.text_content("#canary")
        assert page.text_content("#drift") == "no drift report yet"  # a fresh model: never monitored
        assert page.is_disabled("#approve")  # a reason is required
        page.fill("#reason", "my own model, obviously fine")
        assert page.is_enabled("#approve")
        page.click("#approve")
        page.wait_for_selector("#message.error")
        assert "403" in page.text_content("#message") and "cannot approve" in page.text_content("#message")

        page.fill("#key", ALICE)
        page.click("#load")
        page.wait_for_selector(f'#pending tr[data-model="{name}"]')
        page.click(f'#pending tr[data-model="{name}"] button.open')
        expect(page.locator("#card-title")).to_have_text(f"{name} v{v2}")
        page.fill("#reason", "AUC up 0.05 on the same features; AP within noise")
        page.click("#approve")
        expect(page.locator("#message")).to_have_text(re.compile(r"^approved .* by alice \(hash [0-9a-f]{12}\)$"))
        assert "approved" in page.text_content("#reviews") and "alice" in page.text_content("#reviews")
        assert "approved" in page.text_content(f'#pending tr[data-model="{name}"]')

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        rows = conn.execute("select verdict, reviewer, reason, content_hash, run_author from governance.model_approvals "
                            "where model_name = %s", (name,)).fetchall()
    assert len(rows) == 1
    verdict, reviewer, reason, content_hash, run_author = rows[0]
    assert (verdict, reviewer, run_author) == ("approved", "alice", author)
    assert reason == "AUC up 0.05 on the same features; AP within noise" and len(content_hash) == 64


def test_review_api_requires_a_reason(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingSettings

    app = create_app(settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=API_KEYS))
    with TestClient(app) as c:
        r = c.post("/review/api/models/x/versions/1/approve", json={"reason": ""},
                   headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 422
        assert c.post("/review/api/models/x/versions/1/approve", json={"reason": "ok"}).status_code == 401
        assert c.get("/review").status_code == 200 and "challengers awaiting review" in c.get("/review").text
