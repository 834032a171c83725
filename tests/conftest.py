"""Root test configuration. Shared fixtures live in plugin modules listed here."""
