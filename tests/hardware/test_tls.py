"""mTLS: the development CA commands, refusal of a foreign CA, plaintext only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography import x509

from hardware.agent.routing import SingleHost
from hardware.agent.server import serve
from hardware.agent_client import AgentClient
from hardware.exceptions import AgentUnavailable, PermissionDenied
from simulator.host import SimHost
from tests.simulator.support import make_pki, served_host


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_cli_makes_a_ca_and_node_certificates(tmp_path):
    run = [sys.executable, "-m", "hardware.tls"]
    subprocess.run([*run, "make-dev-ca", "--out", str(tmp_path)], check=True, capture_output=True)
    subprocess.run([*run, "issue-node", "--ca", str(tmp_path), "--name", "gpu-node-7"], check=True, capture_output=True)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "gpu-node-7.pem").read_bytes())
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpu-node-7" in names.get_values_for_type(x509.DNSName)
    assert (tmp_path / "gpu-node-7-key.pem").stat().st_mode & 0o077 == 0  # key readable by owner only


def test_mutual_tls_works(pki):
    with served_host(pki) as (host, client):
        assert client.get_inventory().hostname == host.hostname


def test_client_certificate_from_another_ca_is_refused(pki):
    with served_host(pki) as (_, client):
        foreign = AgentClient(client.endpoint, credentials=pki.foreign_console, timeout=2, retries=1, backoff=0.01)
        with pytest.raises((AgentUnavailable, PermissionDenied)):
            foreign.get_inventory()
        foreign.close()


def test_plaintext_client_cannot_talk_to_an_mtls_agent(pki):
    with served_host(pki) as (_, client):
        plain = AgentClient(client.endpoint, insecure=True, timeout=2, retries=0)
        with pytest.raises(AgentUnavailable):
            plain.get_inventory()
        plain.close()


def test_plaintext_needs_an_explicit_flag():
    with pytest.raises(ValueError, match="insecure"):
        AgentClient("127.0.0.1:1")
    with pytest.raises(ValueError, match="insecure"):
        serve(SingleHost(SimHost("h", "hgx-h100-8"), "h"))
