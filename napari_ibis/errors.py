"""Errors a user can act on. ``str(error)`` is always one readable line."""


class IbisError(Exception):
    """Base class of every error napari-ibis reports to a person (CLI exit code 2)."""


class InputError(IbisError):
    """An image, mask, query or option that cannot be used as given."""


class ModelError(IbisError):
    """A model folder or checkpoint that is missing, incomplete or of the wrong kind."""


class ActionParseError(IbisError):
    """Model output that does not follow the action grammar of the chosen profile."""


class Cancelled(IbisError):
    """The person (or a caller) stopped the run."""
