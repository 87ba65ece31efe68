"""One exceptions tree (core/errors.py): every error raised on purpose is a StreamrecError with a
docstring; classes that moved there are still importable from where they were."""

from __future__ import annotations

import inspect

import core.errors as errors
from core.errors import (
    BrokerError,
    ConfigError,
    DataError,
    EventLogError,
    InvalidRecord,
    NotEnoughData,
    ParityError,
    RegistryError,
    StreamrecError,
)


def test_every_error_is_in_the_tree_with_a_docstring():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == "core.errors"]
    assert {c.__name__ for c in classes} == {
        "StreamrecError",
        "ConfigError",
        "DataError",
        "InvalidRecord",
        "NotEnoughData",
        "RegistryError",
        "ParityError",
        "BrokerError",
        "EventLogError",
        "InvalidRequest",
    }
    for c in classes:
        assert issubclass(c, StreamrecError)
        assert c.__doc__ and len(c.__doc__.split()) >= 8, f"{c.__name__} needs a docstring saying what to do"


def test_shape_of_the_tree():
    assert issubclass(InvalidRecord, DataError) and issubclass(NotEnoughData, DataError)
    for c in (RegistryError, ParityError, BrokerError, EventLogError):
        assert c.__bases__ == (StreamrecError,)
    # ConfigError and DataError replace ValueErrors: code catching ValueError still catches them
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert InvalidRecord("why").reason == "why"


def test_moved_classes_are_importable_from_their_old_homes():
    from core.contracts import InvalidRecord as from_contracts
    from core.datasets import DataError as from_datasets
    from encoders.event_log import EventLogError as from_event_log
    from encoders.retrain import NotEnoughData as from_retrain

    assert (from_contracts, from_datasets, from_event_log, from_retrain) == (
        InvalidRecord,
        DataError,
        EventLogError,
        NotEnoughData,
    )
