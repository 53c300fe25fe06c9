"""Errors of ``fisherkit.laplace``: all are ``FisherkitError`` subclasses (hence ``ValueError``)."""

from ..errors import FisherkitError


class LaplaceError(FisherkitError):
    """A bad argument or an impossible request for a Laplace posterior."""


class NotFittedError(LaplaceError):
    """A method needs ``fit(data)`` (or ``load``) first."""
