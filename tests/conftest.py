# Fixtures live in tests/fixtures/, one module per fake or resource.
pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.slack_api",
    "tests.fixtures.openai_api",
    "tests.fixtures.together_api",
    "tests.fixtures.tiny_model",
    "tests.fixtures.ray_head",
    "tests.fixtures.s3",
]
