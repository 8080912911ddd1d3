"""Small helpers shared by components (scikit-learn conventions)."""

from __future__ import annotations

import inspect
from typing import Any


class Component:
    """Base for components: ``__init__`` stores hyperparameters; ``get_params`` reads them back."""

    def get_params(self) -> dict[str, Any]:
        """Return the hyperparameters given to ``__init__`` (by the names of its parameters)."""
        sig = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and hasattr(self, name)
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def get_params(component: Any) -> dict[str, Any]:
    """Hyperparameters of any component, whether or not it derives from :class:`Component`."""
    if hasattr(component, "get_params"):
        return dict(component.get_params())
    return Component.get_params(component)
