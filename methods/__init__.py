"""Method plugins: one file per method, each registering an :class:`eebench.harness.method.ExitMethod`."""
