"""Root test configuration. Shared fixtures live in plugin modules listed here."""

pytest_plugins = ["tests.repository_fixtures"]
