from .fakes import fake_runtime  # noqa: F401
