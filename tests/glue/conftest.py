from .harness import make_harness  # noqa: F401
