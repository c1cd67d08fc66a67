"""mami: a plugin-based chatbot framework.

Plugin authors need only ``from core import hookimpl`` and the provider protocols in
:mod:`core.protocols`.
"""

from core.plugins import hookimpl

__all__ = ["hookimpl"]
