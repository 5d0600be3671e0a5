"""Typed run configuration (see :mod:`hfedmoe.config.schema`)."""

from hfedmoe.config.schema import *  # noqa: F401,F403
from hfedmoe.config.schema import __all__  # noqa: F401
