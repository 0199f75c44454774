"""The conmon-compatible monitor front end (`bin/pyshim-conmon`), for podman and CRI-O."""
