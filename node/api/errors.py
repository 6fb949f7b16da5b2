"""The errors of the API operations (operations.py): one small hierarchy, no transport.

An operation raises one of these with a message a person can act on; each
transport maps the class to its own status in one place (services.py: gRPC
status codes). The message is the same whatever the transport.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base: the operation did not happen as asked; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(ServiceError):
    """The request itself is wrong (bad input); nothing changed."""


class NotFound(ServiceError):
    """It names a DAG, run, task, attempt or version that does not exist."""


class Conflict(ServiceError):
    """The request is well formed but the current state does not allow it."""


class Exhausted(ServiceError):
    """This node is at a limit; another node, or a later try, may serve it."""


class Unavailable(ServiceError):
    """It cannot be done now (no leader or quorum, a node that holds the data does not
    answer); nothing changed, so retrying, elsewhere too, is safe."""


class NoQuorum(Unavailable):
    """Unavailable because this node reaches no majority of nodes: unlike an election,
    that does not end by itself within seconds (nodes or the network must come back)."""


class OutcomeUnknown(ServiceError):
    """A write may or may not have happened: check before retrying (it could apply twice)."""


class Internal(ServiceError):
    """A bug: the state machine failed to apply the command."""
