"""Model registry in the timm manner: ``@register_model`` factories, ``create_model(name, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "is_model", "list_models", "model_entrypoint", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name (``@register_model def unsam_whole_tiny(**kw)``)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model '{name}' is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``task`` ("whole" or "prompt") filters by name prefix."""
    names = sorted(_MODELS)
    if task is not None:
        names = [n for n in names if n.startswith(f"unsam_{task}_")]
    return names


def is_model(name: str) -> bool:
    return name in _MODELS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'; registered: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` override the variant's defaults (constructor keywords).

    Raises:
        ValueError: unknown name, or a keyword the model does not take (named).
    """
    fn = model_entrypoint(name)
    try:
        return fn(**kwargs)
    except TypeError as e:
        # A misspelt config key reaches the constructor as an unexpected keyword: say which model.
        if "unexpected keyword" in str(e) or "got an unexpected" in str(e):
            raise ValueError(f"model '{name}': {e}") from None
        raise
