"""The committed generated protobuf modules are what `python -m hardware.proto.generate` produces."""

from pathlib import Path

from hardware.proto.generate import GEN_ROOT, generate


def test_generated_code_is_current(tmp_path):
    fresh = generate(tmp_path / "gen")
    fresh_rel = sorted(p.relative_to(tmp_path / "gen") for p in fresh)
    committed_rel = sorted(p.relative_to(GEN_ROOT) for p in GEN_ROOT.rglob("*.py"))
    assert fresh_rel == committed_rel, "run: python -m hardware.proto.generate"
    for rel in fresh_rel:
        assert (tmp_path / "gen" / rel).read_bytes() == (GEN_ROOT / rel).read_bytes(), (
            f"{rel} is stale: run python -m hardware.proto.generate"
        )


def test_generated_modules_import_as_a_package():
    from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2_grpc
    from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2_grpc

    assert agent_pb2_grpc.NodeAgentStub and simadmin_pb2_grpc.SimAdminStub
    assert Path(agent_pb2_grpc.__file__).is_relative_to(GEN_ROOT)
