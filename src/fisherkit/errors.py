"""Errors fisherkit raises for user mistakes.

``FisherkitError`` subclasses ``ValueError`` so existing ``except ValueError`` code keeps working;
the command line turns it into a one-line message and exit code 2.
"""


class FisherkitError(ValueError):
    """A user mistake: bad data, a bad argument, a file from another model."""


class ShapeError(FisherkitError):
    """A tensor has a shape that does not fit (model output vs likelihood, vector vs parameters)."""


class NonFiniteError(FisherkitError):
    """A NaN or infinity appeared in data, outputs or gradients."""


class SupportError(FisherkitError):
    """Data lies outside the support of a distribution (negative counts, labels out of range)."""
