"""CRI v1 client, OCI image builder and deploy-file readers for tests/e2e/test_cri.py."""
