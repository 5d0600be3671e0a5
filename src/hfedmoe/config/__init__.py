"""Typed run configuration: the dataclasses and checks (:mod:`hfedmoe.config.schema`) and
reading / writing them (:mod:`hfedmoe.config.loading`)."""

from hfedmoe.config.loading import *  # noqa: F401,F403
from hfedmoe.config.loading import __all__ as _loading_all
from hfedmoe.config.schema import *  # noqa: F401,F403
from hfedmoe.config.schema import CHOICES, TRAINABLE_PARTS  # noqa: F401
from hfedmoe.config.schema import __all__ as _schema_all

__all__ = [*_schema_all, *_loading_all]
