"""User-facing errors. The CLI turns each into one line on stderr and exit code 2."""


class HFedMoEError(ValueError):
    """Bad input from the user (config, data, model, environment): one clear line, no traceback."""


class AssetMissingError(HFedMoEError):
    """An asset package (pretrained weights or a dataset) is not installed."""


class UnsupportedModelError(HFedMoEError):
    """A model whose experts this project does not know how to address."""
