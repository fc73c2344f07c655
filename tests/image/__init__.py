"""The image suite (pytest-testinfra): what a baked template must pass; run with --hosts."""
