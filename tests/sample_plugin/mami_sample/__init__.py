"""Sample third-party mami plugins (installed by the tests into a temporary target)."""
