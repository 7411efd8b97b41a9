"""Error types shared by the Triton models and the package."""


class InputError(ValueError):
    """A request is malformed. Models answer it with Triton's INVALID_ARG and keep serving its neighbours."""
