"""The node agent: a gRPC server (NodeAgent) in front of a host backend (LinuxHost or SimHost)."""
