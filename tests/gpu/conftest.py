from tests.integration.conftest import tiny_model_dir  # noqa: F401 - shared session fixture
