#!/bin/sh
# The README's containerd commands (tests/e2e/test_quickstart.py runs this file as it is).
# Needs no registry: pyshim makes the busybox image and rootfs from Debian's busybox-static.
# Run it in a scratch directory; ctr talks to CONTAINERD_ADDRESS (default
# /run/containerd/containerd.sock) in CONTAINERD_NAMESPACE (default "default").
set -eux
pyshim image busybox busybox.tar                # an OCI image archive …
ctr images import busybox.tar                   # … as docker.io/library/busybox:latest
ctr run --rm --runtime io.containerd.pyshim.v1 docker.io/library/busybox:latest demo echo hi

pyshim rootfs busybox rootfs                    # a rootfs directory, relative symlinks
ctr run -d --runtime io.containerd.pyshim.v1 --rootfs "$PWD/rootfs" c1 /bin/sleep 1000
ctr task exec --exec-id e1 c1 /bin/ps           # ps, pause/resume, kill, metrics, delete …
ctr task delete --force c1                      # kills it (SIGKILL) and deletes the task
ctr container delete c1
