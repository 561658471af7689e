"""`KubernetesCluster.watch_lease_pods` over real HTTP: phases, exit codes, resume, 410 Gone."""

from __future__ import annotations

import time

import pytest

from hardware.kube import KubernetesCluster
from tests.hardware.kube_mock import KubeMock


@pytest.fixture
def mock():
    server = KubeMock().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(mock):
    return KubernetesCluster(mock.api_client(), request_timeout=5)


def _start(cluster, lease_id):
    return cluster.create_lease_pod(lease_id=lease_id, tenant="t", image="busybox", node="n1", gpu_indexes=[0])


def _watches(mock):
    return [r for r in mock.sent("GET", "^/api/v1/pods$") if r.query.get("watch") == "true"]


def test_lists_then_follows_phases_and_exit_code(mock, cluster):
    _start(cluster, "1")
    stream = cluster.watch_lease_pods(timeout=5)

    listed = next(stream)
    assert (listed.name, listed.phase, listed.lease_id) == ("lease-1", "Pending", "1")

    mock.set_pod_phase("tenant-t", "lease-1", "Running")
    mock.set_pod_phase("tenant-t", "lease-1", "Succeeded", exit_code=0)
    running, done = next(stream), next(stream)
    assert running.phase == "Running" and running.exit_code is None
    assert (done.phase, done.exit_code, done.reason) == ("Succeeded", 0, "Completed")
    assert int(done.resource_version) > int(running.resource_version) > int(listed.resource_version)
    [watch] = _watches(mock)
    assert watch.query["labelSelector"] == "gpuconsole.dev/lease"
    assert watch.query["resourceVersion"] == listed.resource_version  # the list's version

    cluster.delete_lease_pod(lease_id="1", tenant="t")
    assert next(stream).phase == "Deleted"
    stream.close()


@pytest.mark.parametrize("abrupt", [False, True], ids=["stream-ends", "connection-drops"])
def test_dropped_watch_resumes_from_last_resource_version(mock, cluster, abrupt):
    mock.watch_max_events = 1  # every watch connection ends after one event
    mock.watch_abort = abrupt
    first = _start(cluster, "2")
    mock.set_pod_phase("tenant-t", "lease-2", "Running")
    mock.set_pod_phase("tenant-t", "lease-2", "Failed", exit_code=137)

    stream = cluster.watch_lease_pods(resource_version=first.resource_version, timeout=5)
    seen = [next(stream) for _ in range(2)]
    stream.close()

    assert [s.phase for s in seen] == ["Running", "Failed"]
    assert seen[1].exit_code == 137
    assert [w.query["resourceVersion"] for w in _watches(mock)] == [first.resource_version,
                                                                      seen[0].resource_version]
    assert all(r.query.get("watch") == "true" for r in mock.sent("GET", "^/api/v1/pods$"))  # no relist


def test_gone_event_relists_and_watches_from_the_new_version(mock, cluster):
    _start(cluster, "3")
    mock.compacted = 10_000  # every old version is gone

    stream = cluster.watch_lease_pods(resource_version="5", timeout=5)
    relisted = next(stream)
    mock.compacted = 0
    mock.set_pod_phase("tenant-t", "lease-3", "Running")
    after = next(stream)
    stream.close()

    assert relisted.name == "lease-3" and relisted.phase == "Pending"
    assert after.phase == "Running"
    lists = [r for r in mock.sent("GET", "^/api/v1/pods$") if "watch" not in r.query]
    assert len(lists) == 1
    assert [w.query["resourceVersion"] for w in _watches(mock)][:1] == ["5"]


def test_gone_status_on_the_watch_request_relists(mock, cluster):
    _start(cluster, "4")
    mock.fail("GET", "^/api/v1/pods$", 410)

    stream = cluster.watch_lease_pods(resource_version="5", timeout=5)
    assert next(stream).name == "lease-4"
    stream.close()


def test_ends_at_timeout_without_events(cluster):
    began = time.monotonic()
    assert list(cluster.watch_lease_pods(resource_version="1", timeout=1.5)) == []
    assert time.monotonic() - began < 5
