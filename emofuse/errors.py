"""Errors a user can cause. The CLI prints their message as one sentence and exits non-zero."""


class EmofuseError(Exception):
    """Base class for errors caused by input (files, options), never by a bug."""


class CorpusError(EmofuseError):
    """A corpus on disk is not what its reader expects."""


class StoreError(EmofuseError):
    """A feature store is missing, locked, corrupt, or would be mixed with other data."""


class Diverged(EmofuseError):
    """A run whose validation loss or test logits were not finite: a property of its configuration
    (usually its learning rate), not of the input; ``ablate`` goes on with its other rows."""
