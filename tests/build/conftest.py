import pytest

from tests.conftest import HAS_BUILD

if not HAS_BUILD:
    pytest.skip("build tests need the build extra: pip install torch==2.13.0 'edge-embed[build]'",
                allow_module_level=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/build/" in str(item.fspath):
            item.add_marker(pytest.mark.build)
