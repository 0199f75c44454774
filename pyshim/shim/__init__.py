"""containerd front end (runtime io.containerd.pyshim.v1): `start`, `delete`, `-info`, and the
serving daemon. `args`, `start`, `delete` and `wire` stay lean (no asyncio, no protobuf);
`daemon` imports the whole shim."""
