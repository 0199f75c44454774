"""Operator tools: find pyshim's shims and fork-servers on this host and show what they hold
(`pyshim ps`, `inspect`, `debug`, `forkserver`). Clients only: nothing here serves."""
