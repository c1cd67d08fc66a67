"""Third-party plugins for mami's plugin-contract tests (installed with pip by the tests)."""
