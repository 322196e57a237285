"""The tests' Ray cluster, like every cluster this project starts, has token authentication on: its
dashboard (the Jobs API) and its GCS refuse a client without the cluster's token."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cluster.local.ray_head import auth_env, new_token

CONNECT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('connected', ray.cluster_resources()['CPU'])"


def test_the_dashboard_wants_the_token(ray_head):
    url = f"{ray_head.dashboard_url}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer not-the-token"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(wrong, timeout=10)
    assert e.value.code == 403
    right = urllib.request.Request(url, headers={"Authorization": f"Bearer {ray_head.token_path.read_text().strip()}"})
    with urllib.request.urlopen(right, timeout=10) as r:
        assert r.status == 200


def test_a_driver_with_another_token_is_refused(ray_head, tmp_path):
    wrong = new_token(tmp_path / "another-token")
    refused = subprocess.run([sys.executable, "-c", CONNECT, ray_head.address], env=os.environ | auth_env(wrong),
                             capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
    connected = subprocess.run([sys.executable, "-c", CONNECT, ray_head.address], env=os.environ | ray_head.auth_env,
                               capture_output=True, text=True, timeout=180)
    assert connected.returncode == 0 and "connected" in connected.stdout, connected.stderr[-2000:]
