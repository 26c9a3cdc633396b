"""Dashboard promises not covered elsewhere: ``/metrics`` needs the token unless the
dashboard runs with ``--open-metrics`` (and only ``/metrics`` opens then); with Redis
down its API answers "Redis is unreachable" and never shows the Redis password."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tunecluster.cluster import RedisServer
from tunecluster.dashboard.app import create_app

TOKEN = "a-dashboard-token-for-tests"
BASE = "http://127.0.0.1"


def test_metrics_need_the_token_unless_opened(server: RedisServer) -> None:
    with TestClient(create_app(server.url, token=TOKEN), base_url=BASE) as web:
        assert web.get("/metrics").status_code == 401
        assert web.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        shown = web.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert shown.status_code == 200 and "tunecluster_" in shown.text
        assert web.get("/healthz").status_code == 200  # probes: always open
    with TestClient(create_app(server.url, token=TOKEN, open_metrics=True),
                    base_url=BASE) as web:
        shown = web.get("/metrics")
        assert shown.status_code == 200 and "tunecluster_" in shown.text
        assert web.get("/api/jobs").status_code == 401  # nothing else opens with it


def test_redis_down_is_named_and_the_password_never_shown(tmp_path: Path) -> None:
    password = "pw-that-must-not-leak-7f3a"
    redis_server = RedisServer(password=password, data_dir=tmp_path).start()
    try:
        app = create_app(redis_server.url)
    finally:
        redis_server.stop(kill=True)  # Redis goes away under a running dashboard
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as web:
        for path in ("/api/jobs", "/api/jobs/some-job-000000", "/api/workers"):
            answer = web.get(path)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert "Redis is unreachable" in answer.text, (path, answer.text)
            assert password not in answer.text and password not in str(answer.headers)
