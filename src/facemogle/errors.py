"""Exceptions raised for bad user input. The CLI prints them as one line, never a traceback."""


class FaceMoGLEError(ValueError):
    """Base class of every error caused by user input (files, sizes, prompts, configs)."""


class MaskError(FaceMoGLEError):
    """A mask could not be read or is not a valid label map."""


class CheckpointError(FaceMoGLEError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


class InputError(FaceMoGLEError):
    """Any other invalid argument: sizes, prompts, seeds, options."""


class TrainingError(FaceMoGLEError):
    """Training cannot go on (a NaN or infinite loss); nothing of the broken step is saved."""
