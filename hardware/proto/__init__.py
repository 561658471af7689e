"""The node agent's protocol: `.proto` sources under `gpuconsole/`, generated modules under `gen/`."""
